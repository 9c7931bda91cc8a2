"""Every reason a test skips, in one place: what is missing and how to get it.

Markers (`@needs_slurm`, `pytestmark = [needs_slurm]`) decide at collection; the functions
(`needs_cuda()`, `needs_vllm()`, `needs_postgres()`) skip from inside a test or fixture, where
the check needs torch or the test's parameter. A skip never hides a failure: the reason names
the command, package or variable that makes the test run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

# The data shared beside the checkout (../shared: published annotations, references, the
# paper's numbers); the tests that read it skip where it is absent.
SHARED = Path(__file__).resolve().parents[3] / "shared"

needs_slurm = pytest.mark.skipif(
    shutil.which("slurmctld") is None,
    reason="SLURM is not installed (apt-get install slurmctld slurmd slurm-client munge)",
)

needs_chromium = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs chromium and chromedriver: "
    "apt-get install -y --no-install-recommends chromium chromium-driver",
)


def needs_shared_data(*parts: str) -> pytest.MarkDecorator:
    """Skip unless ../shared/<parts> exists (a file or a folder of the shared data)."""
    path = SHARED.joinpath(*parts)
    where = "/".join(("..", "shared", *parts))
    return pytest.mark.skipif(
        not path.exists(), reason=f"{where} is absent: copy the shared data to {SHARED}"
    )


def needs_selenium():
    """selenium.webdriver, or a skip naming the pip package (call at module level)."""
    return pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")


def needs_postgres() -> str:
    """The scratch PostgreSQL URL of NEFTUNE_HUMAN_PG_URL, or a skip saying to set it."""
    url = os.environ.get("NEFTUNE_HUMAN_PG_URL")  # e.g. postgresql+psycopg://postgres@host/db
    if not url:
        pytest.skip("set NEFTUNE_HUMAN_PG_URL to a scratch PostgreSQL database to run this")
    return url


def needs_cuda(why: str) -> None:
    """Skip unless a CUDA GPU is visible (torch's count, else the NVIDIA driver's)."""
    from pipeline.models import devices

    if devices.visible_cuda_gpus() == 0:
        pytest.skip(f"no CUDA GPU visible: {why} (run this test on a GPU node)")


def needs_no_cuda(why: str) -> None:
    """Skip where torch sees a GPU: for tests of what a CPU-only machine must refuse."""
    import torch

    if torch.cuda.is_available():
        pytest.skip(
            f"a GPU is visible: {why} (run this test where no GPU is visible, "
            "e.g. CUDA_VISIBLE_DEVICES=)"
        )


def needs_vllm() -> str:
    """A python that has vllm: NEFTUNE_VLLM_PYTHON, else this one if vllm is installed here."""
    python = os.environ.get("NEFTUNE_VLLM_PYTHON")
    if python:
        return python
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    pytest.skip(
        "vllm is not installed here: set NEFTUNE_VLLM_PYTHON to a venv's python "
        "that has it (pip install vllm in that venv)"
    )
