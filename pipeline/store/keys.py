"""Stage keys: `<stage>-<readable>-<hash>`, the hash over the stage's params, its inputs' keys and
its version. What a stage puts in `params` is its compatibility rule: a setting that must not
change old keys is left out of them (each stage says why, where it builds its params).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(stage: str, readable: str, params: dict, inputs: list[str], version: int) -> str:
    """Key = readable name + short hash of the stage's config, its inputs' keys and its version."""
    own = {"stage": stage, "params": params, "inputs": sorted(inputs), "version": version}
    digest = hashlib.sha256(_canonical(own).encode()).hexdigest()[:12]
    safe = "".join(c if (c.isalnum() or c in "-_.") else "-" for c in readable)
    return f"{stage}-{safe}-{digest}"


def readable_of(key: str) -> str:
    """The readable part of a stage key (`<stage>-<readable>-<hash>` -> `<readable>`)."""
    return key.split("-", 1)[1].rsplit("-", 1)[0]
