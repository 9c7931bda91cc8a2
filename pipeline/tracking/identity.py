"""What a W&B run measured, under the same config keys in every run.

Stages never see the experiment or the point: the plan walker does. It declares what is being
computed (`with tracker.identity(arm=..., noise=..., seed=..., step=...)`, nested inside the
point's `with tracker.identity(experiment=..., point=..., model=..., data=..., judge=...)`), and
every run opened meanwhile merges that identity into its config under IDENTITY_KEYS. So a W&B
workspace plots any summary metric (win rate, LC win rate, answer length, a compare difference)
against `noise.alpha`, grouped by `seed`, from run configs and summaries alone, without joining
runs by hand. A stage shared by several points (a sweep's baseline) is computed once: its run
carries the identity of the arm it measured (alpha 0), which is what an alpha plot needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class Identity:
    """The identity of a stage's computation; None where it has none (a point-level stage has
    no arm, a compare stage pools its seeds)."""

    experiment: str | None = None  # experiment.name: results/<experiment>/ and the W&B group
    point: str | None = None  # the point's id (results/<experiment>/points/<id>.json)
    model: str | None = None  # model.name
    data: str | None = None  # data.name
    judge: str | None = None  # judge.name
    arm: str | None = None  # the arm measured: base, neft-uniform5, ...
    noise: Mapping | None = None  # its noise: kind, alpha (0 for the baseline), length
    seed: int | None = None  # its finetune seed (None: no arm, or seeds pooled)
    variant: str | None = None  # a Table-5 length-control variant of the baseline
    step: str | None = None  # the plan's step: finetune, generate, alpaca_eval, head_to_head, ...

    def merged(self, **given) -> Identity:
        """This identity with `given` fields replaced; an unknown field is an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TypeError(f"tracker identity: unknown field(s) {unknown}; known: {sorted(known)}")
        return replace(self, **given)

    def config(self, stage_key: str | None) -> dict:
        """The run config's identity part: every key of IDENTITY_KEYS, in every run."""
        out = asdict(self)
        out["noise"] = plain_noise(self.noise)
        out["seed"] = None if self.seed is None else int(self.seed)
        out["stage_key"] = stage_key
        return out


IDENTITY_KEYS = tuple(f.name for f in fields(Identity)) + ("stage_key",)
NOISE_KEYS = ("kind", "alpha", "length")


def plain_noise(noise: Mapping | None) -> dict:
    """{kind, alpha, length} (+ a kind's own settings) as plain values; the baseline's noise
    ({"kind": "none"}: noise_params hashes every 'off' alike) gets alpha 0, so that `noise.alpha`
    is a number in every run that measured an arm, and None in every other run."""
    if noise is None:
        return dict.fromkeys(NOISE_KEYS)
    given = {k: noise[k] for k in noise}
    off = given.get("kind") in (None, "none")
    out = {
        "kind": str(given.get("kind") or "none"),
        "alpha": 0.0 if off else float(given.get("alpha") or 0.0),
        "length": None if off else given.get("length"),
    }
    if given.get("settings"):
        out["settings"] = given["settings"]
    return out


NONE = Identity()
_CURRENT: ContextVar[Identity | None] = ContextVar("pipeline_tracking_identity", default=None)


@contextmanager
def identified(**given) -> Iterator[Identity]:
    """Within it, every run opened is of `given` (merged into the identity around it)."""
    declared = current().merged(**given)
    token = _CURRENT.set(declared)
    try:
        yield declared
    finally:
        _CURRENT.reset(token)


def current() -> Identity:
    """The identity declared around the caller (NONE when none is)."""
    return _CURRENT.get() or NONE
