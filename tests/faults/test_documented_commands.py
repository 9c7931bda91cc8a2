"""Every command of the README and the guides beside the code runs, or says why it cannot here.

Each command of a ```bash block of README.md, pipeline/README.md, slurm/README.md,
results/README.md and tests/README.md (one command per `&&` part, continued lines joined) must
match exactly one rule of RULES, and every rule must match a documented command, so a guide can
neither gain a command nothing runs nor keep a rule for a command it dropped. How a rule runs
its commands, on this CPU:

- installs, lint and the full test run: the same lines are in .ci/run, which CI runs;
- `python -m pipeline.run ...`: through its dry run (`dry_run=true`: the composed config of
  every point, its checks, its job and memory plan, nothing trained or submitted), which is
  also how the cluster commands are run here (`launcher=slurm` submits nothing with it);
- re-aggregation, scripts, the human-study commands, prefetch (`--dry-run`): for real, on
  temporary copies and a made-up study;
- sbatch scripts and the tiny end-to-end runs: by the tests named in the rule, which run them
  on the real local slurmctld or on the tiny model;
- the GPU node's command: not runnable without a GPU; its parts must exist.
Placeholders (`$(hostname)`, `/data/...`, `ANNOTATIONS.json`) are replaced by real local things.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDES = ("README.md", "pipeline/README.md", "slurm/README.md", "results/README.md",
          "tests/README.md")  # fmt: skip
SHARED = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Command:
    guide: str
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.guide}: {shlex.join(self.words)}"


def documented_commands() -> list[Command]:
    """Every command of every ```bash block of the guides, split at `&&`, comments dropped."""
    found = []
    for guide in GUIDES:
        text = (ROOT / guide).read_text(encoding="utf-8")
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words, part = shlex.split(line, comments=True), []
                for word in [*words, "&&"]:
                    if word == "&&":
                        if part:
                            found.append(Command(guide, tuple(part)))
                        part = []
                    else:
                        part.append(word)
    return found


# -- how each kind of command is run -----------------------------------------------------------


def _ci_lines() -> list[list[str]]:
    """.ci/run's commands, as words (`&&` chains split; a quote open at a line's end, as in a
    multi-line `python -c`, continues on the next line)."""
    text = (ROOT / ".ci" / "run").read_text(encoding="utf-8").replace("\\\n", " ")
    lines, pending = [], ""
    for line in text.splitlines():
        pending += line + "\n"
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        pending, part = "", []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";"):
                if part:
                    lines.append(part)
                part = []
            else:
                part.append(word)
    return lines


QUIET = {"-q", "-qq", "--quiet", "-y"}


def _essential(words) -> list[str]:
    """A command without the flags that only make it quiet or non-interactive, env first."""
    return [w for w in words if w not in QUIET and not re.fullmatch(r"[A-Z_]+=\S*", w)]


def _extras(spec: str) -> tuple[str, set[str]]:
    m = re.fullmatch(r"(.*?)\[(.*)\]", spec)
    return (m.group(1), set(m.group(2).split(","))) if m else (spec, set())


def in_ci(cmd: Command, tmp_path: Path) -> None:
    """CI runs it: the same program with the same arguments is a line of .ci/run (an install of
    fewer packages or extras is covered by CI's larger one)."""
    mine = _essential(cmd.words)
    for line in map(_essential, _ci_lines()):
        if line == mine:
            return
        if line[:2] == mine[:2] and mine[:2] in (["pip", "install"], ["apt-get", "install"]):
            theirs = [w for w in line[2:] if not w.startswith("-")]
            flags_ok = {w for w in mine[2:] if w.startswith("-")} <= set(line[2:]) | {"-e"}
            covered = all(
                any(
                    _extras(w)[0] == _extras(t)[0] and _extras(w)[1] <= _extras(t)[1]
                    for t in theirs
                )
                for w in mine[2:]
                if not w.startswith("-")
            )
            if flags_ok and covered:
                return
    raise AssertionError(f"{cmd}: no line of .ci/run runs it")


def pytest_selection(cmd: Command, tmp_path: Path) -> None:
    """A part of what CI runs: its markers are declared and its paths exist."""
    markers = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    words = list(cmd.words[3:])
    for i, word in enumerate(words):
        if word == "-m":
            for marker in re.findall(r"\w+", words[i + 1]):
                assert marker in ("not", "and", "or") or f'"{marker}:' in markers, (cmd, marker)
        elif not word.startswith("-") and (i == 0 or words[i - 1] != "-m"):
            assert (ROOT / word).exists(), (cmd, word)


def _placeholders(words, tmp_path: Path) -> list[str]:
    """Documented placeholders replaced by real local things."""
    sharegpt = tmp_path / "sharegpt_alpaca.json"
    if not sharegpt.exists():
        rows = [{"instruction": "Say hi.", "input": "", "output": "Hi."}] * 2
        sharegpt.write_text(json.dumps(rows), encoding="utf-8")
    out = []
    for word in words:
        word = word.replace("/data/sharegpt_alpaca.json", str(sharegpt))
        word = word.replace("$(hostname)", "127.0.0.1")
        out.append(word)
    return out


def _run(argv: list[str], tmp_path: Path, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        argv, cwd=kw.pop("cwd", ROOT), env=env, capture_output=True, text=True, timeout=timeout
    )


def _as_dry_run(words) -> tuple[str, ...]:
    """The overrides of `python -m pipeline.run ...` as its dry run takes them: dry_run=true,
    and no hydra.launcher.* (where jobs are queued changes no point, plan or job size)."""
    kept = [w for w in words[3:] if not w.startswith("hydra.launcher.") and w != "dry_run=true"]
    return (*kept, "dry_run=true")


def dry_run(cmd: Command, tmp_path: Path) -> None:
    """`python -m pipeline.run ...` composed, checked and planned by its dry run: exit 0 and
    every point can run (a cluster command submits nothing with dry_run=true)."""
    overrides = _placeholders(_as_dry_run(cmd.words), tmp_path)
    store = tmp_path / "store"
    argv = [sys.executable, "-m", "pipeline.run", *overrides, f"paths.store={store}",
            f"paths.results={tmp_path / 'results'}"]  # fmt: skip
    done = _run(argv, tmp_path)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert re.search(r"(\d+) of \1 point\(s\) can run", done.stdout), (cmd, done.stdout[-2000:])


def report_on_a_copy(cmd: Command, tmp_path: Path) -> None:
    """Re-aggregation of a committed study, on a copy (the committed files stay as they are)."""
    (target,) = cmd.words[3:]
    copy = tmp_path / target
    shutil.copytree(ROOT / target, copy)
    done = _run([sys.executable, "-m", "pipeline.report", str(copy)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (copy / "REPORT.md").read_text(encoding="utf-8").startswith("#")


def script_on_shared_data(cmd: Command, tmp_path: Path) -> None:
    """The scripts for outputs made elsewhere, on the real public data of ../shared/data."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    files = {
        "ANNOTATIONS.json": SHARED / "alpaca_eval_gpt4_annotations" / "phi-2-sft.json",
        "OUTPUTS.json": SHARED / "alpaca_eval_v1_reference.json",
    }
    argv = [files.get(w, w) for w in cmd.words]
    done = _run([sys.executable, *map(str, argv[1:])], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    json.loads(done.stdout)  # one JSON object, the stages' metrics keys


def prints_points(cmd: Command, tmp_path: Path) -> None:
    done = _run([sys.executable, *cmd.words[1:]], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.splitlines()) == 4  # noise off + alpha 5, 10, 15


def prefetch_dry_run(cmd: Command, tmp_path: Path) -> None:
    """Prefetch lists what it would fetch (--dry-run: no network here)."""
    argv = [sys.executable, *_placeholders(cmd.words[1:], tmp_path), "--dry-run"]
    done = _run(argv, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "meta-llama/Llama-2-7b-hf" in done.stdout


def human_study(cmd: Command, tmp_path: Path) -> None:
    """The human-study commands on a made-up study (tests/support/human.py) named as documented;
    `serve` must answer its start page, then is stopped."""
    from tests.support.human import make_experiment

    experiment = next(w.split("=", 1)[1] for w in cmd.words if w.startswith("experiment="))
    results = tmp_path / "human" / "results"
    if not results.exists():
        make_experiment(tmp_path / "human", experiment=experiment)
    argv = [sys.executable, *_placeholders(cmd.words[1:], tmp_path), "--results", str(results)]
    if cmd.words[3] == "serve":
        _serve(argv, tmp_path)
        return
    if cmd.words[3] == "revoke":  # something to revoke: the invite of the same label first
        label = cmd.words[cmd.words.index("--label") + 1]
        invite = [sys.executable, "-m", "pipeline.human", "invite", f"experiment={experiment}",
                  "--label", label, "--results", str(results)]  # fmt: skip
        assert _run(invite, tmp_path).returncode == 0
    done = _run(argv, tmp_path)
    assert done.returncode == 0, f"{cmd}\n{done.stderr[-3000:]}"


def _serve(argv: list[str], tmp_path: Path) -> None:
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [*argv, "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    assert page.status == 200
                    return
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stdout.read().decode()[-3000:]) from None
                time.sleep(0.1)
        raise AssertionError("serve did not answer within 30 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_by(*tests: str) -> Callable[[Command, Path], None]:
    """Run by these tests (node ids): the same command, on the tiny model or the local cluster."""

    def check(cmd: Command, tmp_path: Path) -> None:
        for node in tests:
            path, _, name = node.partition("::")
            source = (ROOT / path).read_text(encoding="utf-8")
            assert re.search(rf"^def {re.escape(name)}\(", source, re.M), (cmd, node)

    check.tests = tests
    return check


def tiny_stack_run_by(test: str) -> Callable[[Command, Path], None]:
    """A tiny run: the same config as `+stack=smoke` (what the end-to-end tests run) with the
    command's other overrides, and a test that runs that stack this way."""

    def check(cmd: Command, tmp_path: Path) -> None:
        from omegaconf import OmegaConf

        from tests.support.composed import SMOKE, composed

        stack = {"model=tiny", "finetune=tiny", "generate=tiny", "judge=local_tiny"}
        words = cmd.words[3:]
        assert stack <= set(words), cmd
        rest = [w for w in words if w not in stack]
        documented, tested = composed(*words), composed(*SMOKE, *rest)
        assert OmegaConf.to_container(documented) == OmegaConf.to_container(tested), cmd
        run_by(test)(cmd, tmp_path)

    check.tests = (test,)
    return check


def gpu_node_only(cmd: Command, tmp_path: Path) -> None:
    """Needs a GPU (and the wheels gpu_wheels.sh downloads): here, its parts must exist."""
    assert (ROOT / "scripts" / "gpu_wheels.sh").is_file()
    assert "/.whl/" in (ROOT / ".gitignore").read_text(encoding="utf-8")
    assert any(w.endswith("scripts/gpu_acceptance.py") for w in cmd.words) or ".whl/*.whl" in (
        cmd.words
    )


def _starts(*prefix: str) -> Callable[[tuple[str, ...]], bool]:
    return lambda words: words[: len(prefix)] == prefix


def _tiny(words) -> bool:
    return "model=tiny" in words


def _run_cmd(words) -> bool:
    return words[:3] == ("python", "-m", "pipeline.run")


def _sweep(words) -> bool:
    return any(w.startswith("sweep=") for w in words)


RULES: list[tuple[str, Callable[[tuple[str, ...]], bool], Callable]] = [
    ("install", lambda w: w[:2] in (("pip", "install"), ("apt-get", "install")), in_ci),
    ("apt update", _starts("apt-get", "update"), in_ci),
    ("lint", _starts("ruff"), in_ci),
    ("all tests", lambda w: w == ("python", "-m", "pytest", "-q"), in_ci),
    (
        "some tests",
        lambda w: w[:3] == ("python", "-m", "pytest") and w != ("python", "-m", "pytest", "-q"),
        pytest_selection,
    ),
    (
        "tiny smoke run",
        lambda w: _run_cmd(w) and _tiny(w) and not _sweep(w),
        tiny_stack_run_by(
            "tests/test_pipeline_e2e.py::"
            "test_tiny_run_trains_both_arms_generates_in_order_and_reruns_from_the_store"
        ),
    ),
    (
        "tiny sweep",
        lambda w: _run_cmd(w) and _tiny(w) and _sweep(w),
        tiny_stack_run_by(
            "tests/test_pipeline_e2e_points.py::"
            "test_alpha_grid_sweep_trains_the_baseline_once_and_tables_every_alpha"
        ),
    ),
    ("pipeline.run", lambda w: _run_cmd(w) and not _tiny(w), dry_run),
    ("report", _starts("python", "-m", "pipeline.report"), report_on_a_copy),
    ("prefetch", _starts("python", "-m", "pipeline.prefetch"), prefetch_dry_run),
    ("human study", _starts("python", "-m", "pipeline.human"), human_study),
    (
        "scripts on data",
        lambda w: (
            w[:2] in (("python", "scripts/winrate.py"), ("python", "scripts/length_diversity.py"))
        ),
        script_on_shared_data,
    ),  # fmt: skip
    ("sweep points", _starts("python", "scripts/sweep_points.py"), prints_points),
    (
        "sweep array",
        _starts("sbatch", "--array=0-3", "slurm/sweep_array.sbatch"),
        run_by("tests/test_slurm.py::test_sbatch_array_script_runs_every_point"),
    ),
    (
        "multi-node sbatch",
        lambda w: w[0] == "sbatch" and "slurm/finetune_multinode.sbatch" in w,
        run_by(
            "tests/test_slurm_multinode.py::test_multinode_sbatch_trains_through_srun_torchrun_c10d"
        ),
    ),
    ("GPU node", lambda w: w[0] == "python3" or "PYTHONPATH=/tmp/site" in w, gpu_node_only),
]


def _rule_of(cmd: Command) -> str:
    names = [name for name, matches, _ in RULES if matches(cmd.words)]
    assert len(names) == 1, f"{cmd}: matches {names or 'no rule'} (add or narrow a rule)"
    return names[0]


def test_every_documented_command_has_exactly_one_rule_and_every_rule_a_command():
    commands = documented_commands()
    assert len(commands) > 20
    used = {_rule_of(cmd) for cmd in commands}
    assert used == {name for name, _, _ in RULES}, "rules no guide needs any more"


def test_the_tests_that_run_documented_commands_exist():
    """The commands other tests run: each test exists (and a tiny run is their config)."""
    for cmd in documented_commands():
        check = dict((name, run) for name, _, run in RULES)[_rule_of(cmd)]
        if hasattr(check, "tests"):
            check(cmd, Path("."))


def _cases():
    seen, cases = set(), []
    for cmd in documented_commands():
        rule = _rule_of(cmd)
        if rule in ("tiny smoke run", "tiny sweep", "sweep array", "multi-node sbatch"):
            continue  # run by the tests test_the_tests_that_run_documented_commands_exist names
        same = _as_dry_run(cmd.words) if rule == "pipeline.run" else cmd.words
        if same in seen:  # one run for commands that run the same (the README's and a guide's)
            continue
        seen.add(same)
        marks = [pytest.mark.e2e] if rule in ("pipeline.run", "prefetch") else []
        cases.append(pytest.param(cmd, rule, id=shlex.join(cmd.words)[:90], marks=marks))
    return cases


@pytest.mark.parametrize("cmd,rule", _cases())
def test_documented_command_runs(cmd, rule, tmp_path):
    dict((name, run) for name, _, run in RULES)[rule](cmd, tmp_path)


def test_a_command_no_rule_knows_fails_the_check():
    with pytest.raises(AssertionError, match="no rule"):
        _rule_of(Command("README.md", ("python", "-m", "pipeline.newthing")))


def test_no_documented_tiny_command_writes_into_committed_results():
    """A tiny run writes results/smoke (git-ignored), never a committed study's directory."""
    from tests.support.composed import composed

    committed = {d.name for d in (ROOT / "results").iterdir() if (d / "REPORT.md").is_file()}
    assert {"default", "default_all"} <= committed
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    tiny = [c for c in documented_commands() if _tiny(c.words)]
    assert len(tiny) >= 2  # the smoke run and the tiny sweep
    for cmd in tiny:
        name = composed(*cmd.words[3:]).experiment.name
        assert name not in committed and f"results/{name}/" in ignored, cmd
