"""The README's table of GPU memory per model, precision and strategy (no activations).

Run: python -m pipeline.cluster.table
"""

from __future__ import annotations

from pipeline.train.memory_plan import (
    DEFAULT_GPU_GB,
    PRECISIONS,
    RESERVE,
    min_sharded_gpus,
    plan_memory,
)

TABLE_MODELS = (("LLaMA-2-7B", 6.74e9), ("LLaMA-2-13B", 13.0e9), ("LLaMA-2-70B", 69.0e9))
TABLE_SETUPS = (("none", 1), ("ddp", 8), ("fsdp", 4), ("fsdp", 8), ("fsdp", 16))


def memory_table(gpu_gb: float = DEFAULT_GPU_GB) -> str:
    """Markdown table: model x precision x strategy/GPUs -> GB per GPU without activations."""
    usable = gpu_gb * (1 - RESERVE)
    setups = [f"{s} x{n}" for s, n in TABLE_SETUPS]
    header = (
        f"| model | params | precision (B/param) | {' | '.join(setups)} | "
        f"smallest fsdp on {gpu_gb:.0f} GB |"
    )
    lines = [header, "|---|---|---|" + "---|" * (len(setups) + 1)]
    for name, n_params in TABLE_MODELS:
        for precision, per_param in PRECISIONS.items():
            cells = []
            for strategy, world in TABLE_SETUPS:
                plan = plan_memory(n_params, strategy, world, precision, gpu_gb=gpu_gb)
                cells.append(f"{plan.per_gpu_gb:.1f}{'' if plan.fits else ' ✗'}")
            gpus = min_sharded_gpus(n_params, gpu_gb, precision=precision)
            lines.append(
                f"| {name} | {n_params / 1e9:g}B | {precision} ({per_param:g}) | "
                f"{' | '.join(cells)} | {gpus} |"
            )
    return "\n".join(lines) + (
        "\n\nGB per GPU of weights, gradients, AdamW states, the AdamW temporary and (ddp) the\n"
        f"gradient buckets, GB = 1e9 bytes, before activations; ✗: above {usable:.0f} GB, "
        f"{100 - RESERVE * 100:.0f}% of {gpu_gb:.0f} GB.\n"
        "none/ddp keep all of it on every GPU; fsdp shards it over the GPUs.\n"
    )


if __name__ == "__main__":
    print(memory_table())
