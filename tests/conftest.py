"""Tests never touch the network: the hub is switched off for this process and its children.
The fixtures several test modules share are here; shared helpers are in tests/support/."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# alpaca_eval fixes its version at import; the tests use AlpacaEval 1 judges, as the paper did.
os.environ["IS_ALPACA_EVAL_2"] = "False"

import pytest  # noqa: E402  (after the environment above: nothing may read it earlier)


@pytest.fixture
def tiny_run(tmp_path):
    """The tiny end-to-end run (tests.support.pipeline_run.TinyRun: `python -m pipeline.run` on
    the shrunken config, +stack=smoke) on a store under this test's tmp_path."""
    from tests.support.pipeline_run import TinyRun

    return TinyRun(tmp_path / "store")


@pytest.fixture
def study(tmp_path):
    """A loaded human study (pipeline.human) over tests.support.human's made-up experiment."""
    from pipeline.human.study import ensure_dir, load_study
    from tests.support.human import make_experiment

    st = load_study(make_experiment(tmp_path), "exp")
    ensure_dir(st)
    return st


@pytest.fixture
def fake_judge():
    """A running FakeJudge (tests.support.fake_judge), shut down after the test."""
    from tests.support.fake_judge import FakeJudge

    judge = FakeJudge()
    yield judge
    judge.close()
