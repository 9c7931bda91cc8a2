"""Late or unclear failures (issue 13, defect 7), the documented commands: the smoke command of
the README and run.py writes results/smoke, and no documented tiny command writes into the
committed results."""

import re
from pathlib import Path

from tests.support.composed import composed

ROOT = Path(__file__).resolve().parents[2]


def documented_tiny_commands() -> dict[str, list[str]]:
    """Each `python -m pipeline.run ... model=tiny ...` of the README and run.py's docstring:
    the command as written -> its overrides."""
    found = {}
    for path in (ROOT / "README.md", ROOT / "pipeline" / "run.py"):
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")  # continued lines
        for line in text.splitlines():
            if "python -m pipeline.run " not in line or "model=tiny" not in line:
                continue
            overrides = []
            for word in line.split("python -m pipeline.run ", 1)[1].split():
                if "=" not in word or word.startswith("#"):
                    break  # the description or comment after the command
                overrides.append(word)
            found[f"{path.name}: " + re.sub(r"\s+", " ", line.strip())] = overrides
    return found


def committed_experiments() -> set[str]:
    """results/<name>/ folders in the repository, not the ones .gitignore keeps out."""
    ignored = {
        line.strip().strip("/").removeprefix("results/")
        for line in (ROOT / ".gitignore").read_text().splitlines()
        if line.startswith("results/")
    }
    return {
        d.name
        for d in (ROOT / "results").iterdir()
        if (d / "REPORT.md").is_file() and d.name not in ignored
    }


def test_the_smoke_command_writes_results_smoke_not_the_default():
    smokes = {
        where: o
        for where, o in documented_tiny_commands().items()
        if not any(w.startswith("sweep=") for w in o)
    }
    assert {where.split(":")[0] for where in smokes} == {"README.md", "run.py"}
    for where, smoke in smokes.items():
        assert smoke == [
            "model=tiny",
            "finetune=tiny",
            "generate=tiny",
            "judge=local_tiny",
            "experiment.name=smoke",
        ], where
    cfg = composed(*smoke)
    assert cfg.model.name == "tiny-llama" and cfg.experiment.name == "smoke"
    assert Path(cfg.paths.results) / cfg.experiment.name == Path("results/smoke")
    assert "results/smoke/" in (ROOT / ".gitignore").read_text().splitlines()
    # What the command did before: the same overrides land in results/default, committed.
    before = composed(*[o for o in smoke if not o.startswith("experiment.")])
    assert before.experiment.name == "default" and "default" in committed_experiments()


def test_no_documented_tiny_command_writes_into_committed_results():
    commands = documented_tiny_commands()
    assert len(commands) >= 2  # the smoke run and the tiny sweep of the README
    committed = committed_experiments()
    assert {"default", "default_all"} <= committed
    for command, overrides in commands.items():
        assert composed(*overrides).experiment.name not in committed, command
