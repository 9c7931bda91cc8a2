"""What the acceptance checks share: a row of the table, the models and prompts they run on, the
pipeline's composed config, the GPU's peak throughput and the project's declared floors.

Imported by scripts/gpu_acceptance.py (the runner), scripts/gpu_checks.py and
scripts/gpu_fsdp_checks.py (the checks); it imports none of them.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Dense bf16 peak per GPU (TFLOP/s), by a name torch.cuda.get_device_name() contains.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
# The packages whose floors a GPU run must meet (pyproject.toml [project] dependencies).
STACK = ("torch", "transformers", "accelerate", "peft")


class Status(StrEnum):
    """A check's outcome. Only PASS counts as passed; NEEDS_CUDA is excused on a CPU only."""

    PASS = "pass"
    FAIL = "FAIL"
    NEEDS_CUDA = "needs CUDA"
    MISSING = "missing package"


@dataclass
class Row:
    """One line of the acceptance table."""

    check: str  # what is checked
    status: Status
    measured: str  # what this run saw
    expected: str  # what passes
    why: str = ""  # for anything but PASS: the reason, in words

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"status": self.status.value})

    @classmethod
    def from_json(cls, text: str) -> Row:
        data = json.loads(text)
        return cls(**(data | {"status": Status(data["status"])}))


def verdict(check: str, expected: str, measured: str, failures: list[str]) -> Row:
    """PASS when `failures` (the properties that did not hold, in words) is empty."""
    if failures:
        return Row(check, Status.FAIL, measured, expected, "; ".join(failures))
    return Row(check, Status.PASS, measured, expected)


def needs_cuda(check: str, expected: str, what: str) -> Row:
    return Row(check, Status.NEEDS_CUDA, "not run (no CUDA GPU here)", expected, what)


def composed(*overrides: str):
    """The config `python -m pipeline.run *overrides` runs (Hydra, from conf/, each kind's
    settings typed as check_all types them first), resolved precision included: what a stage of
    the pipeline would be given."""
    from pipeline.models.devices import resolve_precision
    from tests.support.composed import composed as composed_and_typed

    cfg = composed_and_typed(*overrides)
    resolve_precision(cfg)
    return cfg


def tiny_llama(dtype, hidden=32, layers=2, vocab=None, heads=4, inter=64, init_std=0.02):
    """A random Llama and the project's tiny BPE tokenizer (seed 0, untied embeddings)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.models.loading import build_tiny_tokenizer

    tok = build_tiny_tokenizer(512)
    config = LlamaConfig(
        vocab_size=vocab or len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=init_std,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(dtype), tok


def eval_prompts(n: int) -> list[str]:
    """The first `n` shipped evaluation prompts in the paper's evaluation template."""
    from pipeline.data.loading import ASSETS, format_prompt

    rows = json.loads((ASSETS / "default_eval.json").read_text(encoding="utf-8"))[:n]
    return [
        format_prompt({"instruction": r["instruction"], "input": r.get("input", "")}, False)
        for r in rows
    ]


def peak_tflops() -> tuple[float | None, str]:
    """(dense bf16 peak of GPU 0, its name); None where the GPU is not in PEAK_BF16_TFLOPS."""
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None), name


def mfu(n_params: float, tokens_per_s: float) -> str:
    """Model FLOP utilisation, 6 N FLOP per token (recomputation not counted)."""
    peak, name = peak_tflops()
    if peak is None:
        return f"n/a (no peak known for {name})"
    return f"{6 * n_params * tokens_per_s / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s"


def declared_floors(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """{package: lowest version pyproject.toml declares} for STACK."""
    import tomllib

    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    floors = {}
    for dep in deps:
        found = re.match(r"([A-Za-z0-9_.-]+)\s*[^;]*?>=\s*([0-9][^,;\s]*)", dep)
        if found and found.group(1).lower() in STACK:
            floors[found.group(1).lower()] = found.group(2)
    return floors


def below(version: str, floor: str) -> bool:
    """Is `version` (a local tag like +cu130 ignored) lower than `floor`?"""
    from packaging.version import Version

    return Version(Version(version).base_version) < Version(floor)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def gb(n_bytes: float) -> float:
    return n_bytes / 1e9
