"""API keys live only in the process environment: a judged stage writes no file containing one.

Both API judge kinds judge a few pairs against FakeJudge (a local OpenAI-compatible server) with
a canary key, which must reach the server and appear in no file and no log line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.judging.alpaca_import import JudgeError
from pipeline.stages.alpaca_eval_stage import alpaca_eval_stage
from pipeline.store.store import Store
from tests.support.composed import SMOKE
from tests.support.fake_judge import FakeJudge, compatible_judge, fake_generate

ROOT = Path(__file__).resolve().parents[2]
CANARY = "sk-canary-5f0c2a9e7d1b4c36"


def files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_openai_compatible_key_is_used_but_never_written(
    tmp_path, fake_judge, monkeypatch, caplog, capsys
):
    monkeypatch.setenv("FAKE_JUDGE_TOKEN", CANARY)
    cfg = compatible_judge(fake_judge.url, key_env="FAKE_JUDGE_TOKEN")
    generated, reference = fake_generate(tmp_path, n=5, broken=0)
    result = alpaca_eval_stage(
        generated, reference, cfg, Store(tmp_path / "store"), Store(tmp_path / "cache")
    )

    assert result.metrics["n_total"] == 5 and fake_judge.answered["valid"] == 5
    assert set(fake_judge.auth) == {f"Bearer {CANARY}"}
    assert files_holding(tmp_path, CANARY) == []
    config = (result.path / "annotator" / "configs.yaml").read_text()
    assert "$FAKE_JUDGE_TOKEN" in config  # the variable's name, for whoever reads the config
    out = capsys.readouterr()
    assert CANARY not in caplog.text + out.out + out.err


def test_a_key_echoed_by_the_server_is_redacted_from_the_error_and_the_logs(
    tmp_path, fake_judge, monkeypatch, caplog, capsys
):
    fake_judge.reject_key = True
    canary = "sk-canary-echoed-in-stage-90b1e4f7"
    monkeypatch.setenv("FAKE_JUDGE_TOKEN", canary)
    cfg = compatible_judge(fake_judge.url, key_env="FAKE_JUDGE_TOKEN")
    generated, reference = fake_generate(tmp_path, n=5, broken=0)
    with pytest.raises(JudgeError) as exc_info:
        alpaca_eval_stage(
            generated, reference, cfg, Store(tmp_path / "store"), Store(tmp_path / "cache")
        )

    assert fake_judge.rejected >= 1
    message = str(exc_info.value)
    assert (
        "401" in message and "Incorrect API key provided: <redacted $FAKE_JUDGE_TOKEN>" in message
    )
    assert "refused the key in $FAKE_JUDGE_TOKEN" in message
    error = exc_info.value
    assert error.__cause__ is None and error.__context__ is None  # nothing of the original
    assert "OpenAIError: Error code: 401" in caplog.text  # alpaca_eval's own log lines, redacted
    out = capsys.readouterr()
    assert canary not in caplog.text + out.out + out.err + message
    assert files_holding(tmp_path, canary) == []


OPENAI_JUDGE_RUN = """
import json, sys
from pathlib import Path
from tests.support.composed import composed  # the cwd, the repository root, is on sys.path
from tests.support.fake_judge import fake_generate
from pipeline.store.store import Store
from pipeline.stages.alpaca_eval_stage import alpaca_eval_stage
tmp = Path(sys.argv[1])
generated, reference = fake_generate(tmp, n=5, broken=0)
judge = composed("judge=weighted_alpaca_eval_gpt4_turbo").judge
result = alpaca_eval_stage(generated, reference, judge, Store(tmp / "store"), Store(tmp / "cache"))
print(json.dumps(result.metrics))
"""


@pytest.mark.e2e  # a whole command in fresh interpreters: tens of seconds
def test_openai_judge_key_is_used_but_never_written(tmp_path, fake_judge):
    # alpaca_eval fixes the key and the API base at import, from the environment: a fresh process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(
        OPENAI_API_KEY=CANARY,
        OPENAI_API_BASE=fake_judge.url,
        IS_ALPACA_EVAL_2="True",
        HF_HUB_OFFLINE="1",
    )
    done = subprocess.run(
        [sys.executable, "-c", OPENAI_JUDGE_RUN, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["n_total"] == 5
    assert fake_judge.answered["valid"] == 5
    assert set(fake_judge.auth) == {f"Bearer {CANARY}"}
    assert files_holding(tmp_path, CANARY) == []
    assert CANARY not in done.stdout + done.stderr


# --- whole runs: every file the pipeline writes --------------------------------------------------

# One arm and 4 optimiser steps: every stage that holds the judge (alpaca_eval, judge_calibration)
# still runs, with W&B offline and Hydra logs, in seconds. The second judge kind reuses the
# finetune and generate stages of the first (same store).
WHOLE_RUN = [
    *SMOKE,
    "openllm=none",
    "logger=offline",
    "noise=off",
    "finetune.max_steps=4",
    "calibration.n_pairs=10",
]
PROMPTS = 6  # generate=tiny's limit: pairs judged against the reference, in one order
CALIBRATION_PAIRS = 10  # each asked in both orders


def leaks(root: Path, secret: str) -> tuple[list[str], int]:
    """Files under root holding the secret or its random part, and how many files were read.
    W&B's .wandb logs are also searched record by record: a string may span two of its blocks."""
    from tests.support.wandb_offline import records

    needles = (secret.encode(), secret.rsplit("-", 1)[1].encode())
    found, n = [], 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        data, n = path.read_bytes(), n + 1
        if path.suffix == ".wandb":
            data += b"".join(r.SerializeToString() for r in records(path))
        if any(needle in data for needle in needles):
            found.append(str(path.relative_to(root)))
    return found, n


def run_whole_pipeline(tmp: Path, judge: list[str], env: dict) -> subprocess.CompletedProcess:
    store = tmp / "store"
    code = (
        f"import sys\nfrom pipeline.run import main\nsys.argv = ['pipeline.run', "
        f"*{WHOLE_RUN + judge!r}, 'paths.store={store}', 'paths.results={store}/results']\n"
        "main()\n"
    )
    wandb_home = tmp / "wandb_home"  # W&B's own cache, config and artifact staging: searched too
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "WANDB_"))},
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **{
            f"WANDB_{d}_DIR": str(wandb_home / d.lower())
            for d in ("CACHE", "CONFIG", "DATA", "ARTIFACT")
        },
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def whole_run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("whole_runs")


@pytest.fixture(scope="module")
def module_fake_judge():
    judge = FakeJudge()
    yield judge
    judge.close()


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["openai_compatible", "openai"])
def test_no_file_of_a_whole_run_holds_the_key(kind, whole_run_dir, module_fake_judge):
    judge = module_fake_judge
    canary = f"sk-canary-{kind.replace('_', '')}-7e41d09b2c58a6f3"
    before = dict(judge.answered)
    judge.auth.clear()
    if kind == "openai_compatible":
        judge_args = [
            "judge=openai_compatible",
            f"judge.settings.base_url={judge.url}",
            "judge.settings.served_model=fake-judge",
            "judge.settings.api_key_env=CANARY_JUDGE_KEY",
        ]
        env = {"CANARY_JUDGE_KEY": canary, "IS_ALPACA_EVAL_2": "False"}
    else:  # alpaca_eval's own OpenAI client: key and base from the environment
        judge_args = ["judge=weighted_alpaca_eval_gpt4_turbo"]
        env = {"OPENAI_API_KEY": canary, "OPENAI_API_BASE": judge.url, "IS_ALPACA_EVAL_2": "True"}
    done = run_whole_pipeline(whole_run_dir, judge_args, env)
    assert done.returncode == 0, done.stderr[-3000:]

    asked = judge.answered["valid"] - before["valid"]
    assert asked == PROMPTS + 2 * CALIBRATION_PAIRS  # every verdict came from the fake judge
    assert set(judge.auth) == {f"Bearer {canary}"}  # ... which got the key
    found, n_files = leaks(whole_run_dir, canary)
    assert found == []
    assert canary not in done.stdout + done.stderr
    assert canary.rsplit("-", 1)[1] not in done.stdout + done.stderr

    # What was searched: this run's judge stages, Hydra's logs and config, W&B's offline runs
    # and the results.
    store = whole_run_dir / "store"
    judged = [p for p in store.glob("alpaca_eval-*") if (p / "COMPLETE").is_file()]
    calibrated = [p for p in store.glob("judge_calibration-*") if (p / "COMPLETE").is_file()]
    name = {"openai_compatible": "openai-compatible", "openai": "weighted_alpaca_eval_gpt4_turbo"}[
        kind
    ]
    assert len([p for p in judged if name in p.name]) == 1
    assert len([p for p in calibrated if name in p.name]) == 1
    if kind == "openai_compatible":
        (stage,) = [p for p in judged if name in p.name]
        assert "$CANARY_JUDGE_KEY" in (stage / "annotator" / "configs.yaml").read_text()
    assert len(list(store.glob("hydra/*/.hydra/config.yaml"))) >= 1
    assert len(list(store.glob("hydra/*/run.log"))) >= 1
    assert len(list(store.glob("wandb/wandb/offline-run-*/run-*.wandb"))) >= 3
    assert (store / "results" / "default" / "REPORT.md").is_file()
    print(f"{kind}: {asked} verdicts from the fake judge, {n_files} files searched, no key")


# --- a judge server that echoes the key in its error (issue 26, item 6) --------------------------


@pytest.fixture(scope="module")
def echo_run_dir(tmp_path_factory):
    # Not whole_run_dir: there the judge stages of the runs above are stored (their keys hold no
    # key and, for the openai kind, no URL), and a rerun would reuse them without a request.
    return tmp_path_factory.mktemp("echo_runs")


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["openai_compatible", "openai"])
def test_a_key_echoed_in_a_401_reaches_no_file_and_no_output(kind, echo_run_dir):
    """The server answers 401 "Incorrect API key provided: <key>": alpaca_eval logs the error
    (warning and traceback), re-raises it, the stage fails inside its W&B run, and Hydra prints
    the job's traceback. The key's value is in none of it; the error still says 401 and which
    variable holds the key."""
    judge = FakeJudge()
    judge.reject_key = True
    canary = f"sk-canary-echoed{kind.replace('_', '')}-3d9f61c07ab2e845"
    try:
        if kind == "openai_compatible":
            judge_args = [
                "judge=openai_compatible",
                f"judge.settings.base_url={judge.url}",
                "judge.settings.served_model=fake-judge",
                "judge.settings.api_key_env=CANARY_JUDGE_KEY",
            ]
            env = {"CANARY_JUDGE_KEY": canary, "IS_ALPACA_EVAL_2": "False"}
            variable = "$CANARY_JUDGE_KEY"
        else:
            judge_args = ["judge=weighted_alpaca_eval_gpt4_turbo"]
            env = {
                "OPENAI_API_KEY": canary,
                "OPENAI_API_BASE": judge.url,
                "IS_ALPACA_EVAL_2": "True",
            }
            variable = "$OPENAI_API_KEY"
        done = run_whole_pipeline(echo_run_dir, judge_args, env)
    finally:
        judge.close()

    assert done.returncode != 0
    assert judge.rejected >= 1, done.stderr[-3000:]
    assert set(judge.auth) == {f"Bearer {canary}"}
    found, n_files = leaks(echo_run_dir, canary)
    assert found == [], found
    output = done.stdout + done.stderr
    assert canary not in output and canary.rsplit("-", 1)[1] not in output
    # Still says what happened and what to fix.
    assert "401" in done.stderr and "Incorrect API key provided" in done.stderr
    assert f"<redacted {variable}>" in done.stderr
    assert n_files > 30 and len(list((echo_run_dir / "store").glob("hydra/*/run.log"))) >= 1
    print(f"{kind}: 401 with the key echoed; {n_files} files searched, no key")
