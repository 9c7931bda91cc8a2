"""The config keys with fixed choices, as Enums the schema types them with.

A typo fails when the config is composed, naming the choices. Members are str, so comparisons with
strings keep working; what a stage key hashes is plain str: build params with `plain(node)` (or
`.value`), since OmegaConf.to_container alone returns the members.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):  # noqa: UP042  (str + Enum, as the schema doc says; StrEnum alike)
    """A fixed choice: a str whose str(), format() and repr() are its value's."""

    __str__ = str.__str__
    __format__ = str.__format__
    __repr__ = str.__repr__


def _choices(name: str, *values: str):
    # Member names equal their values: OmegaConf's enum_to_str writes names.
    return Choice(name, [(v, v) for v in values], module=__name__)


ModelSource = _choices("ModelSource", "hub", "local", "gguf_package", "tiny")
Dtype = _choices("Dtype", "auto", "float32", "bfloat16", "float16")
NoiseLength = _choices("NoiseLength", "per_example", "padded")
Strategy = _choices("Strategy", "none", "ddp", "fsdp")
Sampling = _choices("Sampling", "random", "group_by_length")
LossLogits = _choices("LossLogits", "auto", "all", "response")
TaskSet = _choices("TaskSet", "hub", "local")
Definition = _choices("Definition", "paper", "corrected")
Verify = _choices("Verify", "size", "full")
LoggerMode = _choices("LoggerMode", "disabled", "offline", "online")


def plain(node):
    """A config node as plain containers, Enum members as their str (what stage keys hash)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
