"""Hand-made typed points (pipeline.results.points) for the tables, aggregation and race tests."""

from pipeline.results.points import Arm, Comparison, Point, StageRef

SCORES = {f"openllm_{t}": 0.5 for t in ("arc", "hellaswag", "mmlu", "truthfulqa")}


def ref(stage: str, name: str, **metrics) -> StageRef:
    return StageRef(key=f"{stage}-{name}-000000000000", metrics=metrics)


def analysis(name: str, chars: float) -> StageRef:
    return ref(
        "analysis",
        name,
        chars_mean=chars,
        words_mean=chars / 6,
        rep2_pct=5.0,
        log_diversity=6.0,
        n_kept=3,
        n_total=4,
        definition="paper",
    )


def overfit(name: str, train: float, heldout: float) -> StageRef:
    return ref(
        "overfit",
        name,
        overfit_train_loss=train,
        overfit_heldout_loss=heldout,
        overfit_rougeL=0.5,
        overfit_bleu=20.0,
        overfit_n_train=2,
        overfit_n_heldout=2,
        overfit_n_generated=2,
        overfit_heldout="pkg:x.json",
    )


def arm(
    point: str,
    name: str,
    alpha: float,
    wr: float,
    chars: float,
    kind="uniform",
    openllm=False,
    fit=None,
) -> Arm:
    tag = f"{point}_{name}"
    stages = {
        "finetune": ref("finetune", tag, train_loss=1.0),
        "generate": ref("generate", tag, gen_n_outputs=4),
        "alpaca_eval": ref(
            "alpaca_eval",
            tag,
            win_rate=wr,
            standard_error=1.0,
            lc_win_rate=wr - 10,
            lc_standard_error=None,
            lc_label="LC (minimal GLM)",
        ),
        "analysis": analysis(tag, chars),
    }
    if openllm:
        stages["openllm"] = ref("openllm", tag, **SCORES, openllm_average=0.5)
    if fit:
        stages["overfit"] = overfit(tag, *fit)
    noise = (
        {"kind": "none"} if alpha == 0 else {"kind": kind, "alpha": alpha, "length": "per_example"}
    )
    return Arm(name=name, baseline=alpha == 0, seed=42, noise=noise, stages=stages)


def _setting(lora: bool) -> dict:
    """The setting block of a point: a full finetune, or LoRA on a plain base."""
    return {
        "method": "LoRA (plain base, no 4-bit)" if lora else "full finetune",
        "lora": lora,
        "lora_4bit": False,
        "epochs": 1,
        "learning_rate": 1e-4,
        "effective_batch": 8,
        "world_size": 1,
        "n_train": 10,
        "n_eval": 4,
        "cutoff": 50,
        "seeds": [42],
        "openllm": {"name": "local_cpu", "task_set": "local", "limit": 16, "shots": {"arc": 3}},
    }


def _head_to_head(name: str, treated: str) -> Comparison:
    """The judge's treated-vs-base comparison of a point (55% of 4 pairs)."""
    return Comparison(
        arm=treated,
        baseline="base",
        seed=42,
        stages={
            "head_to_head": ref(
                "alpaca_eval", f"{name}_h2h", win_rate=55.0, standard_error=2.0, n_total=4.0
            )
        },
    )


def point(
    name: str,
    treated: str,
    alpha: float,
    neft_wr: float,
    kind="uniform",
    lora=False,
    variants=(),
    main=False,
) -> Point:
    setting = _setting(lora)
    arms = [
        arm(name, "base", 0, 40.0, 250.0, openllm=main, fit=(1.0, 2.0) if main else None),
        arm(
            name,
            treated,
            alpha,
            neft_wr,
            333.0,
            kind,
            openllm=main,
            fit=(1.5, 1.9) if main else None,
        ),
    ]
    h2h = [_head_to_head(name, treated)]
    return Point(
        id=f"point-{name}",
        name=name,
        experiment="exp",
        store="/nonexistent-store",
        model="m",
        dataset="default",
        judge="j",
        reference="r",
        setting=setting,
        arms=arms,
        variants=list(variants),
        comparisons=h2h,
        effects=[],
        point_stages={"train_analysis": analysis(f"{name}_train", 300.0)},
        overrides=[f"+point=all_{name}"],
        choices={"generate": "cpu"},
        config={"finetune": {"epochs": 1}},
    )
