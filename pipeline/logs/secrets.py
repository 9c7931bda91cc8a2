"""API keys kept out of everything the pipeline, Hydra and W&B record.

A key lives only in the process environment (the variable a judge config names), but a server
may echo it in an error ("401 Incorrect API key provided: <key>"), which alpaca_eval logs (a
warning and a traceback) and re-raises. Once a key is in use, `keep_out_of_logs` registers its
value: `redact` replaces it by `<redacted $VARIABLE>`, and a filter on every handler of the root
logger (Hydra's console and run.log; W&B's console capture only sees what those print) redacts it
from every record, its traceback included. Exceptions are redacted where the key is used (the
API judge kinds), before anything prints or records them.
"""

from __future__ import annotations

import logging
import os

# Shorter values are not redacted: "EMPTY" or "x" (a local vLLM accepts any token) are no secret,
# and replacing them would garble every line that happens to contain them.
MIN_SECRET_CHARS = 8

_SECRETS: dict[str, str] = {}  # value -> the variable it was read from


def redact(text: str) -> str:
    """`text` with the value of every registered key replaced by <redacted $VARIABLE>."""
    for value in sorted(_SECRETS, key=len, reverse=True):  # a key containing another: first
        if value in text:
            text = text.replace(value, f"<redacted ${_SECRETS[value]}>")
    return text


def holds_secret(text: str) -> bool:
    return any(value in text for value in _SECRETS)


class RedactSecrets(logging.Filter):
    """Redacts registered keys from a record's message, traceback and stack before any handler
    formats it (set on handlers: a logger's own filters miss records of its child loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  (a bad format string: logging reports it itself)
            return True
        if holds_secret(message):
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            # Formatted once here, as the handler's formatter would, and cached redacted: every
            # formatter uses exc_text when it is set.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and holds_secret(record.exc_text):
            record.exc_text = redact(record.exc_text)
        if record.stack_info and holds_secret(record.stack_info):
            record.stack_info = redact(record.stack_info)
        return True


def keep_out_of_logs(*variables: str) -> list[str]:
    """Register the values of these environment variables (comma-separated lists: each item) as
    secrets, and make sure every root handler redacts them; returns the variables that hold one.
    Called when a key is handed to a client: Hydra replaces the handlers at each job of a
    multirun, so each use installs the filter on the handlers of the moment."""
    held = []
    for variable in variables:
        whole = os.environ.get(variable, "")
        for value in {whole.strip(), *(v.strip() for v in whole.split(","))}:
            if len(value) >= MIN_SECRET_CHARS:
                _SECRETS.setdefault(value, variable)
                held.append(variable)
    if _SECRETS:
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets())
    return sorted(set(held))
