"""judge_calibration stage: how far the configured judge can be trusted, measured on pairs with
reference verdicts (default: a seeded sample of alpaca_eval's published GPT-4 AlpacaEval 1
verdicts, pinned and sha256-checked: pipeline/judging/calibration_source.py).

The judge runs through the same alpaca_eval path as the alpaca_eval stage, asked in both orders.
Half of the sampled pairs (seeded) have their outputs swapped, the reference verdict flipped with
them, so that a judge that always picks one slot agrees 50% and chance is 50%. Reported, each
with a bootstrap 95% CI: agreement with the reference verdicts (alpaca_eval's tie convention),
agreement of the length-only rule ("the longer answer wins") on the same pairs, position
consistency across the two orders, and plain-words verdicts. Computed once per judge and
calibration set, reused by every point.

Writes calibration.json (every pair with both verdicts) and metrics.json.
Run: python -m pipeline.run     (calibration.n_pairs pairs; results/bench/judges.md: 200+)
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.judging.calibration_source import (
    CalibrationUnavailable,
    how_to_get,
    published,
    resolve,
)
from pipeline.judging.judges import annotator, judge_key_params, judge_pairs, validate_judge
from pipeline.stages.contract import Call, Context
from pipeline.store.store import StageResult, Store, stage_key, write_json_atomic

VERSION = 1


def calibration_files(source: str, cache_root) -> list[Path]:
    """The annotation files of calibration.pairs=`source` (a local file or folder, or a published
    set from the cache at `cache_root`, downloaded there first if need be), sorted by name;
    raises CalibrationUnavailable when they are not to be had."""
    return resolve(source, cache_root, allow_download=True)


def _overrides() -> list[str]:
    """This run's command-line overrides, for a command the user can paste."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def uncalibrated(cfg, why: Exception) -> str:
    """What the run says when the judge goes uncalibrated: why, and how to get the pairs."""
    return (
        f"[judge_calibration] the judge stays UNCALIBRATED ({why}): "
        f"{how_to_get(cfg.calibration.pairs, _overrides())}"
    )


def check(cfg) -> None:
    """Cheap: the judge can run and the pairs' source is valid; says when the pairs are not here
    (a published set is then downloaded when the stage runs; a missing local one is skipped)."""
    validate_judge(cfg.judge)
    if cfg.calibration.n_pairs < 10:
        raise ValueError(f"calibration.n_pairs={cfg.calibration.n_pairs}: use at least 10")
    if cfg.calibration.resamples < 1000:  # as compare.resamples: a percentile interval needs it
        raise ValueError(
            f"calibration.resamples={cfg.calibration.resamples}: use at least 1000 for a 95% "
            "interval"
        )
    if not cfg.calibration.enabled:
        return
    spec = published(cfg.calibration.pairs)  # a published name at an unpinned commit: refused
    try:
        resolve(cfg.calibration.pairs, cfg.paths.cache, allow_download=False)
    except CalibrationUnavailable as err:
        if spec is None:
            print(uncalibrated(cfg, err), flush=True)
        else:
            print(
                f"[judge_calibration] {err}: downloaded from {spec.repo} when the judge is "
                f"calibrated; where this run has no internet, "
                f"{how_to_get(cfg.calibration.pairs, _overrides())}",
                flush=True,
            )


def enabled(cfg) -> bool:
    """Runs when calibration is on and its pairs are here (or downloaded now); otherwise says
    why and how to get them, and the judge is reported uncalibrated."""
    if not cfg.calibration.enabled:
        return False
    try:
        calibration_files(cfg.calibration.pairs, cfg.paths.cache)
    except CalibrationUnavailable as err:
        print(uncalibrated(cfg, err), flush=True)
        return False
    return True


def run(cfg, ctx: Context, call: Call) -> StageResult:
    """Plan entry: calibrate cfg.judge."""
    return judge_calibration(cfg.judge, cfg.calibration, ctx.store, ctx.cache)


def sample_pairs(files: list[Path], n_pairs: int, seed: int) -> list[dict]:
    """A seeded sample of pairs with a decided or tied reference verdict, half of them swapped."""
    records = []
    for f in files:
        records += [
            r
            for r in json.loads(f.read_text(encoding="utf-8"))
            if r.get("preference") in (1, 1.0, 1.5, 2, 2.0)
            and isinstance(r.get("output_1"), str)
            and isinstance(r.get("output_2"), str)
        ]
    if len(records) < n_pairs:
        raise ValueError(
            f"calibration set has {len(records)} usable pairs, fewer than "
            f"calibration.n_pairs={n_pairs}; lower it"
        )
    rng = random.Random(seed)
    chosen = rng.sample(records, n_pairs)
    pairs = []
    for i, r in enumerate(chosen):
        swap = rng.random() < 0.5
        one, two = ("output_2", "output_1") if swap else ("output_1", "output_2")
        pairs.append(
            {
                "instruction": r["instruction"],
                "output_1": r[one],
                "output_2": r[two],
                "generator_1": f"calibration_{i}_a",
                "generator_2": f"calibration_{i}_b",
                "dataset": r.get("dataset", ""),
                "reference_preference": 3 - float(r["preference"])
                if swap
                else float(r["preference"]),
            }
        )
    return pairs


def _calibrate(judge_cfg, calibration_cfg, files: list[Path], work: Path, cache: Store) -> dict:
    """Ask the judge the sampled pairs in both orders; agreement and position consistency."""
    from pipeline.metrics.agreement import judge_agreement, position_consistency

    pairs = sample_pairs(files, calibration_cfg.n_pairs, calibration_cfg.seed)
    asked = [{k: v for k, v in p.items() if k != "reference_preference"} for p in pairs]
    scored = judge_pairs(annotator(judge_cfg, work, cache), asked, both_orders=True)
    forward = [s["preference_forward"] for s in scored]
    backward = [s["preference_backward"] for s in scored]
    # the verdict the pipeline uses: both orders averaged, or the first order alone
    verdicts = [
        s["preference"] if judge_cfg.both_orders else s["preference_forward"] for s in scored
    ]
    reference = [p["reference_preference"] for p in pairs]
    agreement = judge_agreement(
        verdicts,
        reference,
        [len(p["output_1"]) for p in pairs],
        [len(p["output_2"]) for p in pairs],
        calibration_cfg.seed,
        calibration_cfg.resamples,
    )
    consistency = position_consistency(
        forward, backward, calibration_cfg.resamples, calibration_cfg.seed
    )
    write_json_atomic(
        work / "calibration.json",
        [
            {**p, "judge_preference": v, "forward": f, "backward": b}
            for p, v, f, b in zip(pairs, verdicts, forward, backward)
        ],
    )
    return {
        **agreement,
        "position_consistency": consistency,
        "judge": judge_cfg.name,
        "pairs_source": str(calibration_cfg.pairs),
        "both_orders_averaged": bool(judge_cfg.both_orders),
    }


def judge_calibration(judge_cfg, calibration_cfg, store: Store, cache: Store) -> StageResult:
    """Agreement of `judge_cfg` with the reference verdicts of the calibration set."""
    # Keyed on the files' bytes, not on where they came from: the published set, its cached
    # download and a local copy of it (../shared/data) give one key.
    files = calibration_files(calibration_cfg.pairs, cache.root)
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    params = judge_key_params(judge_cfg) | {
        "n_pairs": calibration_cfg.n_pairs,
        "seed": calibration_cfg.seed,
        "resamples": calibration_cfg.resamples,
        "pairs": digest,
    }
    key = stage_key(
        "judge_calibration",
        f"{judge_cfg.name}_{calibration_cfg.n_pairs}",
        params,
        [digest],
        VERSION,
    )

    def compute(work: Path) -> dict:
        return _calibrate(judge_cfg, calibration_cfg, files, work, cache)

    return store.materialize(
        key,
        compute,
        resumable=True,
        config=OmegaConf.to_container(calibration_cfg) | {"judge": params},
    )
