"""pipeline/README.md's "Extending" section, done: the worked per-arm stage `endings` (the share of
answers that end a sentence, tests/support/endings_example/) is installed into a copy of the
repository and run on the tiny stack, and the files it adds or changes are exactly the ones the
README lists for "A new per-arm stage". A list that goes stale (a place the README forgets, or
one it names that a stage no longer needs) fails here.

The example holds each file at its real path: a new module whole; for a module that exists, the
lines it adds, in blocks headed `# into: imports` (after the last top-level import) or
`# into: NAME` (the last element of the tuple `NAME = (...)`).
"""

from __future__ import annotations

import ast
import csv
import filecmp
import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.support.pipeline_run import TinyRun
from tests.test_architecture import forbidden_imports, import_cycles

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "support" / "endings_example"
STAGE = "endings"
COPIED = ("pipeline", "conf", "hydra_plugins")  # what `python -m pipeline.run` reads
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")
REPO_PATH = re.compile(r"`((?:pipeline|conf)/[^`\s]*)`")


def readme_places(text: str | None = None) -> tuple[set[str], set[str]]:
    """(the files every new per-arm stage touches, the files it touches only if the bullet's
    condition holds) as pipeline/README.md's Extending bullet names them, <name> as `endings`."""
    text = text or (ROOT / "pipeline" / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Extending", 1)[1].split("\n## ", 1)[0]
    bullet = re.search(r"^- \*\*A new per-arm stage.*?(?=^- |\Z)", section, re.M | re.S)
    assert bullet, "pipeline/README.md, Extending: no bullet '- **A new per-arm stage'"
    always, _, conditional = bullet.group(0).partition("Only if")

    def paths(part: str) -> set[str]:
        return {p.replace("<name>", STAGE) for p in REPO_PATH.findall(part)}

    return paths(always), paths(conditional)


def example_files() -> set[str]:
    return {
        p.relative_to(EXAMPLE).as_posix()
        for p in EXAMPLE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def _blocks(excerpt: str) -> list[tuple[str, str]]:
    """(target, code) of each `# into: target` block of an excerpt."""
    out, target, lines = [], None, []
    for line in excerpt.splitlines() + ["# into: <end>"]:
        if line.startswith("# into: "):
            if target is not None:
                out.append((target, "\n".join(lines).strip("\n")))
            target, lines = line.removeprefix("# into: ").strip(), []
        elif target is not None:
            lines.append(line)
    return out


def _as_element(code: str) -> str:
    """One expression as a tuple element: a comma after it (before any trailing comment)."""
    tree = ast.parse(code)
    (statement,) = tree.body
    lines = code.splitlines()
    end, col = statement.end_lineno - 1, statement.end_col_offset
    lines[end] = lines[end][:col] + "," + lines[end][col:]
    return textwrap.indent("\n".join(lines), "    ")


def _insert(source: str, target: str, code: str) -> str:
    lines = source.splitlines()
    if target == "imports":
        at = max(i for i, line in enumerate(lines) if re.match(r"(from|import) ", line))
        while lines[at].rstrip().endswith("("):  # a parenthesised import: after its ")"
            at = next(i for i in range(at, len(lines)) if lines[i].startswith(")"))
        lines[at + 1 : at + 1] = code.splitlines()
    else:
        start = lines.index(f"{target} = (")
        close = next(i for i in range(start, len(lines)) if lines[i] == ")")
        lines[close:close] = _as_element(code).splitlines()
    return "\n".join(lines) + "\n"


def install(repo: Path) -> None:
    """The example put into `repo` (a copy of COPIED) as a newcomer would put it."""
    for rel in sorted(example_files()):
        src, dst = EXAMPLE / rel, repo / rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            continue
        source = dst.read_text(encoding="utf-8")
        blocks = _blocks(src.read_text(encoding="utf-8"))
        assert blocks, f"{rel}: an excerpt with no `# into:` block"
        for target, code in blocks:
            source = _insert(source, target, code)
        dst.write_text(source, encoding="utf-8")


def changed_files(repo: Path) -> set[str]:
    """Files of `repo` that differ from (or are not in) this repository, under COPIED."""
    out = set()
    for top in COPIED:
        for path in (repo / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                rel = path.relative_to(repo)
                if not (ROOT / rel).is_file() or not filecmp.cmp(path, ROOT / rel, shallow=False):
                    out.add(rel.as_posix())
    return out


@pytest.fixture
def repo_with_example(tmp_path) -> Path:
    repo = tmp_path / "repo"
    for top in COPIED:
        shutil.copytree(ROOT / top, repo / top, ignore=IGNORED)
    install(repo)
    return repo


def test_the_readme_lists_exactly_the_places_the_example_touches(repo_with_example):
    always, conditional = readme_places()
    assert always == example_files(), (
        "pipeline/README.md's 'A new per-arm stage' bullet and tests/support/endings_example/ "
        "disagree on the files a new per-arm stage touches"
    )
    assert changed_files(repo_with_example) == always
    # the conditional places name files that exist (a rename leaves no stale name behind)
    assert conditional, "the bullet names no place for settings or a paired effect"
    for place in conditional:
        fixed = place.split("<", 1)[0]  # conf/<group>/ -> conf/
        assert (ROOT / fixed).exists(), f"pipeline/README.md names {place}, which is not here"


def test_a_stale_list_disagrees_with_the_example():
    """The check above can fail: a README that forgets a place, or names one a stage without
    settings does not touch, gives another set of files than the example's."""
    text = (ROOT / "pipeline" / "README.md").read_text(encoding="utf-8")
    assert readme_places(text)[0] == example_files()
    forgot = text.replace("`pipeline/results/registry.py`, one", "one", 1)
    assert readme_places(forgot)[0] == example_files() - {"pipeline/results/registry.py"}
    extra = text.replace(
        "`pipeline/plan.py`, its import", "`pipeline/config/schema.py`, `pipeline/plan.py`, its", 1
    )
    assert readme_places(extra)[0] == example_files() | {"pipeline/config/schema.py"}


def test_the_installed_stage_is_one_step_and_one_table_inside_the_walls(repo_with_example):
    repo = repo_with_example
    plan = ast.parse((repo / "pipeline" / "plan.py").read_text(encoding="utf-8"))
    steps = next(
        n.value
        for n in plan.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "STEPS"
    )
    last = steps.elts[-1]
    assert ast.literal_eval(last.args[0]) == STAGE and ast.unparse(last.args[2]) == "(ARM,)"
    registry = (repo / "pipeline" / "results" / "registry.py").read_text(encoding="utf-8")
    compile(registry, "registry.py", "exec")
    assert 'model_tables.arm_metrics(\n            "endings"' in registry
    assert forbidden_imports(repo / "pipeline") == []
    assert import_cycles(repo / "pipeline") == []


@pytest.mark.e2e
def test_the_worked_stage_runs_for_each_arm_and_its_table_links_every_cell(
    repo_with_example, tmp_path
):
    """The copy with the example, run as `python -m pipeline.run +stack=smoke` (its own
    pipeline/ is imported: it is the working directory): an endings stage per arm whose number
    is the share counted here from that arm's answers, and a table and REPORT.md section whose
    every number names that stage's key."""
    tiny = TinyRun(tmp_path / "store", root=repo_with_example)
    done = tiny.run("openllm=none", "logger=disabled", "head_to_head=false")
    assert done.returncode == 0, done.stderr[-3000:]

    (point_file,) = (tiny.results_dir() / "points").glob("*.json")
    arms = json.loads(point_file.read_text())["arms"]
    assert [a["name"] for a in arms] == ["base", "neft-uniform5"]
    shares = {}
    for arm in arms:
        ref = arm["stages"][STAGE]  # the stage ran for this arm, on this arm's answers
        stored = tiny.store / ref["key"]
        answers = json.loads(
            (tiny.store / arm["stages"]["generate"]["key"] / "outputs.json").read_text()
        )
        ended = [a["output"].rstrip().rstrip("\"')]»”’").endswith((".", "!", "?")) for a in answers]
        assert json.loads((stored / "per_output.json").read_text()) == [int(e) for e in ended]
        metrics = json.loads((stored / "metrics.json").read_text())
        assert metrics == ref["metrics"] | metrics  # the point carries the stage's numbers
        assert metrics["endings_n"] == len(answers) == 6
        assert metrics["endings_share"] == pytest.approx(100 * sum(ended) / len(ended))
        shares[arm["name"]] = (f"{metrics['endings_share']:.2f}", ref["key"])
    assert len({key for _, key in shares.values()}) == 2  # one stage per arm, not one shared

    table = list(csv.reader((tiny.results_dir() / f"{STAGE}.csv").open(encoding="utf-8")))
    header, rows = table[0], table[1:]
    assert header == [
        "model, data",
        "arm",
        "endings_share",
        "endings_share — stage key",
        "endings_n",
        "endings_n — stage key",
    ]
    for row in rows:
        share, key = shares[row[1]]
        assert row[2:] == [share, key, "6.00", key]  # every number beside its stage key
    assert sorted(r[1] for r in rows) == sorted(shares)
    report = (tiny.results_dir() / "REPORT.md").read_text()
    section = report.split("## Endings — answers that end a sentence", 1)[1].split("\n## ", 1)[0]
    for share, key in shares.values():
        assert f"{share} [" in section and f"`{key}`" in section
