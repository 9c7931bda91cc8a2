"""One-GPU acceptance of the paper-scale path: what only a GPU can show, in one short run.

Checks (scripts/gpu_checks.py, scripts/gpu_fsdp_checks.py), each a row of the table it writes:
- stack: torch, transformers, accelerate and peft at or above pyproject.toml's floors;
- NEFT on a padded bf16 batch (rows of 333 and 120 tokens, d 4096): per-row norm alpha/sqrt(3),
  each row's scale alpha/sqrt(L_i d) exactly, zero on padding;
- the finetune stage (pipeline.stages.finetune, the path of 43 of the 48 paper points): bf16 on
  the GPU, NEFT on, loss falling, and the GPU memory handed back before the next stage;
- LLaMA-2-7B shape (random, no download): the pipeline's training arguments for finetune=paper,
  3 steps at 512 tokens; peak allocated and reserved beside every term of the memory plan,
  tokens/s and MFU over steps 2-3;
- FSDP at world size 1 under torchrun: sharded checkpoint, a killed run resumes at its step, the
  consolidated safetensors load;
- generation: 8 prompts alone == in one batch and non-empty in fp32, bf16 differences counted;
- lm-eval (the openllm stage) scores a shipped task on the GPU.

Each check runs in its own process with its own timeout, inside a total time budget; a check
that fails, crashes, times out or lacks a package is a row saying why. On a GPU (or with
--expect cuda) the exit status is 1 unless every row passed; on a CPU the checks that need CUDA
say so and do not count (CI runs this on the tiny model, so it cannot rot).

Run: python scripts/gpu_acceptance.py --expect cuda   (GPU node: results/bench/gpu.md, CUDA part)
     python scripts/gpu_acceptance.py                 (a CPU: the same file's CPU part)
     python scripts/gpu_acceptance.py --out /tmp/a.md --only neft generation
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.gpu_rows import STACK, Row, Status  # noqa: E402

OUT = ROOT / "results" / "bench" / "gpu.md"
# The whole run, by the device it is for: a check not started within it is a row saying so. On a
# GPU node under 8 minutes (the device's command limit is 10, the wheels' install included).
BUDGET_S = {"cuda": 480, "cpu": 1800}


@dataclass(frozen=True)
class Spec:
    name: str  # for --only
    target: str  # "module:function", called as function(expect, work) -> Row
    timeout_s: int


CHECKS = (
    Spec("stack", "scripts.gpu_checks:check_stack", 120),
    Spec("neft", "scripts.gpu_checks:check_neft", 180),
    Spec("finetune", "scripts.gpu_checks:check_finetune", 300),
    Spec("memory_7b", "scripts.gpu_checks:check_memory_7b", 300),
    Spec("fsdp", "scripts.gpu_fsdp_checks:check_fsdp", 300),
    Spec("generation", "scripts.gpu_checks:check_generation", 240),
    Spec("lm_eval", "scripts.gpu_checks:check_lm_eval", 300),
)


def run_one(target: str, expect: str, work: Path) -> Row:
    """Call one check in this process; an exception becomes its row (a missing package named)."""
    module, _, function = target.partition(":")
    try:
        return getattr(importlib.import_module(module), function)(expect, work)
    except ModuleNotFoundError as err:
        return Row(
            target,
            Status.MISSING,
            "not run",
            "runs",
            f"{err.name} is not installed (scripts/gpu_wheels.sh brings the wheels)",
        )
    except Exception as err:  # noqa: BLE001  (any failure is a row, never the end of the run)
        where = traceback.extract_tb(err.__traceback__)[-1]
        return Row(
            target,
            Status.FAIL,
            "raised",
            "runs",
            f"{type(err).__name__}: {str(err)[:600]} ({Path(where.filename).name}:{where.lineno})",
        )


def run_isolated(spec: Spec, expect: str, work: Path, timeout_s: float) -> Row:
    """`spec` in a fresh process (its own CUDA context, process group and imports), killed with
    its whole process group (torchrun and its workers too) at `timeout_s`."""
    result, log = work / f"{spec.name}.json", work / f"{spec.name}.log"
    (work / spec.name).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", spec.target, "--expect", expect]
    cmd += ["--work", str(work / spec.name), "--result", str(result)]
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return Row(
                spec.name, Status.FAIL, "timed out", "runs", f"killed after {timeout_s:.0f} s"
            )
    if result.is_file():
        row = Row.from_json(result.read_text(encoding="utf-8"))
        return row if row.check != spec.target else dataclasses.replace(row, check=spec.name)
    tail = " ".join(log.read_text(encoding="utf-8", errors="replace").split()[-60:])
    return Row(spec.name, Status.FAIL, "crashed", "runs", f"exit code {code}: ... {tail}")


def passed(rows: list[Row], expect: str) -> bool:
    """Every row passed; on a CPU a row that needs CUDA is excused."""
    return all(
        r.status is Status.PASS or (expect == "cpu" and r.status is Status.NEEDS_CUDA) for r in rows
    )


def run_checks(specs, expect: str, work: Path, budget_s: float, on_row=None) -> list[Row]:
    started, rows = time.monotonic(), []
    for spec in specs:
        left = budget_s - (time.monotonic() - started)
        if left < 10:
            row = Row(
                spec.name, Status.FAIL, "not run", "runs", f"the {budget_s:.0f} s budget ran out"
            )
        else:
            row = run_isolated(spec, expect, work, min(spec.timeout_s, left))
        rows.append(row)
        if on_row is not None:
            on_row(rows)
    return rows


def section_markers(expect: str) -> tuple[str, str]:
    kind = "cuda" if expect == "cuda" else "cpu"
    return f"<!-- gpu_acceptance {kind}: begin -->", f"<!-- gpu_acceptance {kind}: end -->"


def write_table(out: Path, table: str, expect: str) -> None:
    """Write `table` between this device kind's markers in `out` (gpu.md keeps the history of
    earlier GPU checks, and the other kind's table, around it); `out` is the table alone when it
    has no such markers."""
    begin, end = section_markers(expect)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = out.read_text(encoding="utf-8") if out.is_file() else ""
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        table = f"{head}{begin}\n{table}{end}{rest.partition(end)[2]}"
    out.write_text(table, encoding="utf-8")


def render(rows: list[Row], expect: str, gpu: str | None, seconds: float) -> str:
    versions = ", ".join(f"{n} {importlib.metadata.version(n)}" for n in STACK)
    where = gpu or "CPU (no CUDA)"
    lines = [
        f"### GPU acceptance: {where}, Python {platform.python_version()}, {versions}, "
        f"{seconds:.0f} s",
        "",
        f"Written by `python scripts/gpu_acceptance.py` (expect {expect}); "
        f"{'all passed' if passed(rows, expect) else 'NOT all passed'}.",
        "",
        "| check | result | measured | expected | why not |",
        "|---|---|---|---|---|",
    ]
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines += [
        f"| {cell(r.check)} | {r.status.value} | {cell(r.measured)} | {cell(r.expected)} | "
        f"{cell(r.why)} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file to write")
    parser.add_argument(
        "--expect",
        choices=("cuda", "cpu"),
        default=None,
        help="the device the run is for (default: cuda if torch sees a GPU)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="check names to run")
    parser.add_argument("--budget-s", type=float, default=None, help="total seconds")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child: module:function
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.one:
        row = run_one(opts.one, opts.expect, opts.work)
        opts.result.write_text(row.to_json(), encoding="utf-8")
        return 0
    # Nothing here downloads: a GPU node has no network, and a hub call would hang a check until
    # its timeout instead of failing at once. The checks' processes inherit this.
    for offline in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(offline, "1")
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    expect = opts.expect or ("cuda" if gpu else "cpu")
    specs = [s for s in CHECKS if opts.only is None or s.name in opts.only]
    started = time.monotonic()

    def write(rows):
        print(rows[-1].to_json(), flush=True)
        write_table(opts.out, render(rows, expect, gpu, time.monotonic() - started), expect)

    with tempfile.TemporaryDirectory(prefix="gpu_acceptance_") as tmp:
        budget = opts.budget_s or BUDGET_S[expect]
        rows = run_checks(specs, expect, Path(tmp), budget, on_row=write)
    print(f"wrote {opts.out}")
    return 0 if passed(rows, expect) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
