"""judge_calibration stage: how far the configured judge can be trusted, measured on pairs with
reference verdicts (default: a seeded sample of the shipped GPT-4 AlpacaEval 1 verdicts).

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

from pipeline.judging.judges import annotator, judge_key_params, judge_pairs, validate_judge
from pipeline.store.store import StageResult, Store, stage_key, write_json_atomic

VERSION = 1


def calibration_files(source: str) -> list[Path]:
    """The annotation files of a calibration set: one JSON file, or every *.json in a folder."""
    path = Path(source)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path] if path.is_file() else []
    return files


def check(cfg) -> None:
    """Cheap: the judge can run; says so when the calibration set is missing (then skipped)."""
    validate_judge(cfg.judge)
    if cfg.calibration.n_pairs < 10:
        raise ValueError(f"calibration.n_pairs={cfg.calibration.n_pairs}: use at least 10")
    if cfg.calibration.enabled and not enabled(cfg):
        print(f"[judge_calibration] calibration.pairs={cfg.calibration.pairs!r} has no annotation "
              "file here: the judge will be reported as uncalibrated", flush=True)


def enabled(cfg) -> bool:
    """Runs when calibration is on and its pairs are here."""
    return bool(cfg.calibration.enabled and calibration_files(cfg.calibration.pairs))


def run(cfg, ctx, call) -> StageResult:
    """Plan entry: calibrate cfg.judge."""
    return judge_calibration(cfg.judge, cfg.calibration, ctx.store, ctx.cache)


def sample_pairs(files: list[Path], n_pairs: int, seed: int) -> list[dict]:
    """A seeded sample of pairs with a decided or tied reference verdict, half of them swapped."""
    records = []
    for f in files:
        records += [r for r in json.loads(f.read_text(encoding="utf-8"))
                    if r.get("preference") in (1, 1.0, 1.5, 2, 2.0)
                    and isinstance(r.get("output_1"), str) and isinstance(r.get("output_2"), str)]
    if len(records) < n_pairs:
        raise ValueError(f"calibration set has {len(records)} usable pairs, fewer than "
                         f"calibration.n_pairs={n_pairs}; lower it")
    rng = random.Random(seed)
    chosen = rng.sample(records, n_pairs)
    pairs = []
    for i, r in enumerate(chosen):
        swap = rng.random() < 0.5
        one, two = ("output_2", "output_1") if swap else ("output_1", "output_2")
        pairs.append({"instruction": r["instruction"], "output_1": r[one], "output_2": r[two],
                      "generator_1": f"calibration_{i}_a", "generator_2": f"calibration_{i}_b",
                      "dataset": r.get("dataset", ""),
                      "reference_preference": 3 - float(r["preference"]) if swap
                      else float(r["preference"])})
    return pairs


def judge_calibration(judge_cfg, calibration_cfg, store: Store, cache: Store) -> StageResult:
    """Agreement of `judge_cfg` with the reference verdicts of the calibration set."""
    files = calibration_files(calibration_cfg.pairs)
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    params = judge_key_params(judge_cfg) | {"n_pairs": calibration_cfg.n_pairs,
              "seed": calibration_cfg.seed, "resamples": calibration_cfg.resamples,
              "pairs": digest}
    key = stage_key("judge_calibration", f"{judge_cfg.name}_{calibration_cfg.n_pairs}", params,
                    [digest], VERSION)

    def compute(work: Path) -> dict:
        from pipeline.metrics.agreement import judge_agreement, position_consistency

        pairs = sample_pairs(files, calibration_cfg.n_pairs, calibration_cfg.seed)
        asked = [{k: v for k, v in p.items() if k != "reference_preference"} for p in pairs]
        scored = judge_pairs(annotator(judge_cfg, work, cache), asked, both_orders=True)
        forward = [s["preference_forward"] for s in scored]
        backward = [s["preference_backward"] for s in scored]
        # the verdict the pipeline uses: both orders averaged, or the first order alone
        verdicts = [s["preference"] if judge_cfg.both_orders else s["preference_forward"]
                    for s in scored]
        reference = [p["reference_preference"] for p in pairs]
        agreement = judge_agreement(verdicts, reference, [len(p["output_1"]) for p in pairs],
                                    [len(p["output_2"]) for p in pairs], calibration_cfg.seed,
                                    calibration_cfg.resamples)
        consistency = position_consistency(forward, backward, calibration_cfg.resamples,
                                           calibration_cfg.seed)
        write_json_atomic(work / "calibration.json", [
            {**p, "judge_preference": v, "forward": f, "backward": b}
            for p, v, f, b in zip(pairs, verdicts, forward, backward)])
        return {**agreement, "position_consistency": consistency, "judge": judge_cfg.name,
                "pairs_source": str(calibration_cfg.pairs),
                "both_orders_averaged": bool(judge_cfg.both_orders)}

    return store.materialize(key, compute, resumable=True,
                             config=OmegaConf.to_container(calibration_cfg) | {"judge": params})
