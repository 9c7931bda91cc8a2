"""Judge kinds by name (judge.kind): each module of this package registers one JudgeKind.

A new kind is one module here, e.g. mykind.py:

    from dataclasses import dataclass
    from pipeline.judging.kinds import JudgeKind, register

    @dataclass
    class MySettings:
        temperature: float = 0.0  # sampling temperature of the verdict (0 = greedy)

    @register("mykind")
    class MyKind(JudgeKind):
        Settings = MySettings  # judge.settings, typed (omit: the kind has no settings)
        def validate(self, judge_cfg): ...  # cheap, before work; self.settings(judge_cfg)
        def annotator_args(self, judge_cfg, work, cache, fn_completions): ...  # (config, kwargs)

plus conf/judge/<name>.yaml (`kind: mykind`, `settings: {temperature: 0.5}`: only what differs
from the dataclass). Modules are found with pkgutil the first time a kind is looked up, so
nothing else names them. judge.settings is checked against MySettings right after composition:
an unknown key or a wrong type fails naming the kind and the key.
"""

from __future__ import annotations

import functools
import traceback
from pathlib import Path

from pipeline.judging.alpaca_import import JudgeError
from pipeline.logs.secrets import holds_secret, keep_out_of_logs, redact
from pipeline.registry import NoSettings, Registry


class JudgeKind:
    """How one kind of judge is checked, built into alpaca_eval's annotator and keyed."""

    name = "?"  # set by @register
    Settings: type = NoSettings  # the dataclass of judge.settings for this kind

    def settings(self, judge_cfg):
        """judge.settings, typed as this kind's Settings (checked; defaults filled in)."""
        return REGISTRY.settings(judge_cfg)

    def validate(self, judge_cfg) -> None:
        """Fail (JudgeError) before any training or generation when this judge cannot run.
        (judges.validate_judge then pins judge.alpaca_eval_version for the process.)"""

    def annotator_args(self, judge_cfg, work: Path, cache, fn_completions) -> tuple[Path, dict]:
        """(alpaca_eval annotator config file, extra PairwiseAnnotator arguments)."""
        raise NotImplementedError

    def prepare(self, annotator, judge_cfg) -> None:
        """Adjust the built annotator in memory (e.g. hand it an API key)."""

    def model(self, judge_cfg):
        """The model config this judge loads on this machine (prefetch fetches it), or None.
        Kept at judge.settings.model, where models.devices.resolve_precision resolves its
        dtype before any key."""
        return None

    def key_params(self, judge_cfg) -> dict:
        """What besides the judge config enters its stage keys (e.g. a local model's device)."""
        return {}


def redact_key_errors(annotator, judge_cfg, variables: tuple[str, ...]) -> None:
    """Keep the API keys in `variables` out of what a failed judging leaves behind.

    A server may echo the key in its error (a 401 "Incorrect API key provided: <key>"), which
    alpaca_eval logs and re-raises: the keys are redacted from every log record
    (pipeline.logs.secrets), and annotator.annotate_pairs raises, in place of an error whose text
    holds one, a JudgeError saying the same with the key redacted, the original dropped (not
    chained: Hydra prints the chain, W&B records what is printed)."""
    held = keep_out_of_logs(*variables)
    if not held:
        return
    annotate = annotator.annotate_pairs

    @functools.wraps(annotate)
    def annotate_pairs(*args, **kwargs):
        try:
            return annotate(*args, **kwargs)
        except Exception as err:
            if not holds_secret("".join(traceback.format_exception(err))):
                raise
            failure = JudgeError(_redacted(err, judge_cfg, held))
        # Raised outside the except clause, so that not even __context__ holds the original.
        raise failure

    annotator.annotate_pairs = annotate_pairs


def _redacted(err: Exception, judge_cfg, held: list[str]) -> str:
    variables = " or ".join(f"${v}" for v in held)
    what = f"judge={judge_cfg.name}: {type(err).__module__}.{type(err).__qualname__}: "
    status = getattr(err, "status_code", None)
    if status in (401, 403):
        fix = f"; the judge server refused the key in {variables}: export a valid key there"
    else:
        fix = ""
    said = redact(str(err)).rstrip(".")
    return f"{what}{said}{fix} (the key's value is redacted from this error and the logs)"


REGISTRY = Registry(
    "judge.kind",
    "kinds",
    __name__,
    lambda name: (
        f"A new kind is pipeline/judging/kinds/{name}.py (a JudgeKind subclass "
        f"decorated with @register({name!r}), its Settings dataclass beside it) and "
        f"conf/judge/<judge name>.yaml (kind: {name}, settings: what differs)"
    ),
    error=JudgeError,
)
KINDS = REGISTRY.entries
discover = REGISTRY.discover


def register(name: str):
    """Class decorator: an instance of the JudgeKind subclass becomes judge kind `name`."""
    return REGISTRY.register(name, instantiate=True)


def names() -> tuple[str, ...]:
    """Every registered judge.kind."""
    return REGISTRY.names()


def judge_kind(name: str) -> JudgeKind:
    """The kind registered as `name`; unknown: JudgeError naming the kinds and what to add."""
    return REGISTRY.get(name)


def judge_settings(judge_cfg):
    """judge.settings typed as judge.kind's Settings, in place (see Registry.settings)."""
    return REGISTRY.settings(judge_cfg)
