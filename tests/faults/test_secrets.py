"""API keys live only in the process environment: a judged stage writes no file containing one.

Both API judge kinds judge a few pairs against FakeJudge (a local OpenAI-compatible server) with
a canary key, which must reach the server and appear in no file and no log line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.stages.alpaca_eval_stage import alpaca_eval_stage
from pipeline.core.store import Store

from .test_judge_cache import compatible_judge, fake_generate, fake_judge  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
CANARY = "sk-canary-5f0c2a9e7d1b4c36"


def files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_openai_compatible_key_is_used_but_never_written(tmp_path, fake_judge, monkeypatch,
                                                         caplog, capsys):
    monkeypatch.setenv("FAKE_JUDGE_TOKEN", CANARY)
    cfg = compatible_judge(fake_judge.url, key_env="FAKE_JUDGE_TOKEN")
    generated, reference = fake_generate(tmp_path, n=5, broken=0)
    result = alpaca_eval_stage(generated, reference, cfg, Store(tmp_path / "store"),
                               Store(tmp_path / "cache"))

    assert result.metrics["n_total"] == 5 and fake_judge.answered["valid"] == 5
    assert set(fake_judge.auth) == {f"Bearer {CANARY}"}
    assert files_holding(tmp_path, CANARY) == []
    config = (result.path / "annotator" / "configs.yaml").read_text()
    assert "$FAKE_JUDGE_TOKEN" in config  # the variable's name, for whoever reads the config
    out = capsys.readouterr()
    assert CANARY not in caplog.text + out.out + out.err


OPENAI_JUDGE_RUN = """
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")  # as pytest imports the tests
from composed import composed
from faults.test_judge_cache import fake_generate
from pipeline.core.store import Store
from pipeline.stages.alpaca_eval_stage import alpaca_eval_stage
tmp = Path(sys.argv[1])
generated, reference = fake_generate(tmp, n=5, broken=0)
judge = composed("judge=weighted_alpaca_eval_gpt4_turbo").judge
result = alpaca_eval_stage(generated, reference, judge, Store(tmp / "store"), Store(tmp / "cache"))
print(json.dumps(result.metrics))
"""


def test_openai_judge_key_is_used_but_never_written(tmp_path, fake_judge):
    # alpaca_eval fixes the key and the API base at import, from the environment: a fresh process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_API_KEY=CANARY, OPENAI_API_BASE=fake_judge.url, IS_ALPACA_EVAL_2="True",
               HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", OPENAI_JUDGE_RUN, str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["n_total"] == 5
    assert fake_judge.answered["valid"] == 5
    assert set(fake_judge.auth) == {f"Bearer {CANARY}"}
    assert files_holding(tmp_path, CANARY) == []
    assert CANARY not in done.stdout + done.stderr
