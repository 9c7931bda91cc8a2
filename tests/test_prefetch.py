"""pipeline.prefetch without the network: a local hub mirror (--source) filled with a tiny random
Llama and a small dataset, prefetched for every point of a real multirun experiment, then loaded
by the pipeline's own loaders under HF_HUB_OFFLINE=1 from the caches alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cluster.fetchers import FETCHERS, fetcher_for
from pipeline.cluster.mirror import MirrorDataset, MirrorModel

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"instruction": f"Say {w}.", "input": "", "output": w} for w in ("one", "two", "three")]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """DIR/models/org/tiny (a random 2-layer Llama + tokenizer), DIR/datasets/org/data."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.models.loading import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("mirror")
    tok = build_tiny_tokenizer(300)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(root / "models/org/tiny")
    tok.save_pretrained(root / "models/org/tiny")
    data = root / "datasets/org/data"
    data.mkdir(parents=True)
    (data / "train.json").write_text(json.dumps(ROWS))
    lc_data = root / "datasets/tatsu-lab/alpaca_eval"  # alpaca_eval's LC data, judge.lc_data=hub
    lc_data.mkdir(parents=True)
    (lc_data / "df_gamed.csv").write_text("index,preference\n0,1.0\n")
    return root


def _env(hf_home: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE")
    }
    # Offline throughout: the mirror fetchers must not need the network.
    return env | {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _prefetch(hf_home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.prefetch", *args],
        cwd=ROOT,
        env=_env(hf_home),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _rows(out: str) -> dict[str, list[str]]:
    """Table rows by id: [kind, id, where, size, status, needed by]."""
    cells = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| ") and " kind " not in line
    ]
    return {c[1]: c for c in cells}


# Loads the model, dataset and LC data with the pipeline's own loaders; prints what it got.
LOAD_OFFLINE = (
    "from pipeline.models.loading import load_model_and_tokenizer\n"
    "from pipeline.data.loading import load_train\n"
    "from pipeline.metrics.winrate import find_lc_data\n"
    "model, tok = load_model_and_tokenizer('org/tiny', 'float32')\n"
    "print(type(model).__name__, len(tok), len(load_train('hf:org/data')),\n"
    "      open(find_lc_data('hub')).read().splitlines()[0])\n"
)


def _load_offline(hf_home: Path) -> subprocess.CompletedProcess:
    """Run LOAD_OFFLINE in a fresh python under HF_HUB_OFFLINE=1 with the caches of hf_home."""
    return subprocess.run(
        [sys.executable, "-c", LOAD_OFFLINE],
        cwd=ROOT,
        env=_env(hf_home),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_a_missing_item_fails_named(hf_home, mirror, overrides, absent):
    """A dataset the mirror lacks fails the command, named; a missing optional file does not."""
    missing = _prefetch(
        hf_home,
        *overrides[:4],
        "data.train=hf:org/nope",
        "judge=local_tiny",
        f"calibration.pairs={absent}",
        "--source",
        str(mirror),
    )
    assert missing.returncode == 1
    assert "FAILED dataset org/nope" in missing.stderr
    assert "not in the mirror" in missing.stderr
    rows = _rows(missing.stdout)
    assert rows["org/tiny"][4] == "already present"
    # The run goes on without calibration pairs (the judge is then reported uncalibrated).
    assert rows[str(absent)][4] == "missing (optional)"
    assert "FAILED file" not in missing.stderr


def test_fetcher_registry_by_kind_and_origin(tmp_path):
    """One fetcher per (kind, origin); --source switches the hub kinds to the mirror ones."""
    assert {k for k, _ in FETCHERS} == {
        "model",
        "dataset",
        "hub_file",
        "calibration",
        "file",
        "config",
    }
    assert isinstance(fetcher_for("model", tmp_path), MirrorModel)
    assert isinstance(fetcher_for("dataset", tmp_path), MirrorDataset)
    assert type(fetcher_for("model", None)).__name__ == "HubModel"


@pytest.mark.e2e  # a whole command in fresh interpreters: tens of seconds
def test_prefetch_from_mirror_then_offline_load(mirror, tmp_path):
    """Every point of experiment=default_all (5 points) needs the same model and dataset: each is
    fetched once into the caches, loads offline with the pipeline's loaders, a second run finds
    it already present, and an item the mirror lacks fails the command, named."""
    hf_home, pairs = tmp_path / "hf", tmp_path / "pairs.json"
    pairs.write_text("[]")
    overrides = [
        "experiment=default_all",
        "model.source=hub",
        "model.id=org/tiny",
        "model.dtype=float32",
        "data.train=hf:org/data",
        "judge=local_tiny",
        "judge.lc_data=hub",
        f"calibration.pairs={pairs}",
    ]
    first = _prefetch(hf_home, *overrides, "--source", str(mirror))
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"HF_HUB_CACHE={hf_home / 'hub'}" in first.stdout  # the caches, printed first
    assert "[prefetch] 5 points, 4 distinct items" in first.stdout
    rows = _rows(first.stdout)
    lc_file = "tatsu-lab/alpaca_eval/df_gamed.csv"
    assert set(rows) == {"org/tiny", "org/data", lc_file, str(pairs)}  # once for all 5 points
    assert rows["org/tiny"][4] == rows["org/data"][4] == rows[lc_file][4] == "fetched"
    assert rows[str(pairs)][4] == "already present"  # a local file: checked, not fetched
    assert rows["org/tiny"][5] == "5 points"
    assert rows["org/tiny"][2] == str(hf_home / "hub" / "models--org--tiny")
    assert f"export HF_DATASETS_CACHE={hf_home / 'datasets'}" in first.stdout
    assert "export HF_HUB_OFFLINE=1" in first.stdout

    offline = _load_offline(hf_home)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.split()[-4:] == ["LlamaForCausalLM", "300", "3", "index,preference"]

    second = _prefetch(hf_home, *overrides, "--source", str(mirror))
    assert second.returncode == 0, second.stderr
    rows = _rows(second.stdout)
    assert rows["org/tiny"][4] == rows["org/data"][4] == rows[lc_file][4] == "already present"

    _assert_a_missing_item_fails_named(hf_home, mirror, overrides, tmp_path / "no_pairs")


@pytest.mark.e2e  # a whole command in fresh interpreters: tens of seconds
def test_dry_run_lists_every_paper_model(capsys):
    """experiment=paper_all, dry: every point is enumerated and every hub model of conf/model/ is
    listed (with the leaderboard's lm-eval datasets), nothing fetched."""
    from pipeline.prefetch import main

    expected = {
        cfg["id"]
        for cfg in (yaml.safe_load(p.read_text()) for p in (ROOT / "conf/model").glob("*.yaml"))
        if cfg.get("source", "hub") == "hub"
    }
    assert "meta-llama/Llama-2-7b-hf" in expected and "facebook/opt-6.7b" in expected
    n_points = 48  # Figure 2: 12, Figure 4: 1, Tables 1: 4, 2: 3, 3: 15, 5: 1, 6: 12

    assert main(["experiment=paper_all", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"[prefetch] {n_points} points," in out
    rows = _rows(out)
    models = {i for i, row in rows.items() if row[0] == "model"}
    assert models == expected
    assert all(rows[m][4] in ("to fetch", "present") for m in models)
    for dataset in (
        "tatsu-lab/alpaca",
        "WizardLM/WizardLM_evol_instruct_70k",
        "allenai/ai2_arc:ARC-Challenge",
        "cais/mmlu:anatomy",
    ):
        assert rows[dataset][0] == "dataset"
    assert "fetched" not in {row[4] for row in rows.values()}
