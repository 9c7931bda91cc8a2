"""The walls of pipeline/: which package may import which, and no import cycle between modules;
and of scripts/: a script may import the pipeline (and tests.support's composed config, for the
benchmarks), the pipeline never imports a script or a test, and no cycle runs through scripts or
the Hydra plugins.

Every `import pipeline...` counts, at module level or inside a function: an import moved into a
function to dodge a cycle is still an arrow. README's Architecture section draws the same layers.
Run: python -m pytest -q tests/test_architecture.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipeline"
SCRIPTS = REPO / "scripts"
HYDRA_PLUGINS = REPO / "hydra_plugins"  # the project's plugins: grid sweeper, cluster launcher
# The repository's import roots: an import of another top-level name is a library's.
PROJECT = ("pipeline", "scripts", "tests", "hydra_plugins")
# What the pipeline and the scripts must not import (a name or a module under it), and what of
# that a script may import still: the composed config the benchmarks share with the tests.
NEVER = {"pipeline": ("scripts", "tests"), "scripts": ("tests",)}
SCRIPTS_MAY_IMPORT = ("tests.support",)

# What each unit of pipeline/ may import from the project (besides itself). A unit is a package
# (pipeline/<package>/) or a top-level module (pipeline/<module>.py). Lower units first.
ALLOWED: dict[str, set[str]] = {
    "logs": set(),  # logging (rank prefix), log tails, secret redaction: the floor every unit uses
    "markup": set(),  # text that is data put into Markdown or figures (pipeline/markup.py)
    "registry": set(),  # kinds by name (pipeline/registry.py): the floor too
    "store": {"logs"},
    "metrics": {"logs"},
    "config": {"store", "logs"},
    "data": {"logs"},
    "tracking": {"logs"},
    "models": {"store", "data", "logs"},
    "generation": {"models", "data", "store", "logs", "registry"},
    "train": {"models", "data", "store", "config", "logs", "registry"},
    "judging": {"models", "data", "store", "config", "metrics", "logs", "registry"},
    "stages": {
        "store",
        "metrics",
        "config",
        "data",
        "models",
        "generation",
        "train",
        "judging",
        "tracking",
        "logs",
    },
    "human": {"store", "metrics", "logs", "markup"},
    "results": {"store", "metrics", "data", "logs", "markup", "human"},
    "plan": {"stages", "results", "store", "models", "judging", "train", "logs"},
    "cluster": {
        "plan",
        "stages",
        "results",
        "train",
        "data",
        "store",
        "metrics",
        "config",
        "models",
        "judging",
        "generation",
        "logs",
    },
}
# Entry points: what a user runs. They may import any unit, and no unit imports them.
ENTRIES = {"run", "report", "prefetch", "human.__main__"}


def unit_of(module: str) -> str:
    """'pipeline.store.locking' -> 'store'; 'pipeline.plan' -> 'plan'; entry points by name."""
    parts = module.split(".")[1:]
    if ".".join(parts[:2]) in ENTRIES:
        return ".".join(parts[:2])
    return parts[0] if parts else ""


def _imported(path: Path, name: str, package: str) -> set[str]:
    """Absolute names of the project modules (and names in them) `path` imports anywhere."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PROJECT}


def _modules(*roots: Path) -> dict[str, tuple[Path, str]]:
    """module name -> (file, its package) of every .py under the roots (each a folder directly
    under one repository root: a package such as pipeline/, or scripts/)."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = (path, name if parts[-1] == "__init__" else name.rpartition(".")[0])
    return out


def project_imports(*roots: Path) -> dict[str, set[str]]:
    """module name -> the modules of `roots` it imports anywhere in its file (absolute names)."""
    modules = _modules(*roots)
    # `from pipeline.x import y` names module pipeline.x.y only where that module exists
    return {
        m: {i for i in _imported(path, m, package) if i in modules} - {m}
        for m, (path, package) in modules.items()
    }


def forbidden_imports(root: Path) -> list[str]:
    """'a -> b' for every import that crosses a wall of ALLOWED, or reaches an entry point."""
    bad = []
    for module, deps in project_imports(root).items():
        unit = unit_of(module)
        for dep in sorted(deps):
            target = unit_of(dep)
            if target in ("", unit) or unit in ENTRIES:
                continue
            if target in ENTRIES or target not in ALLOWED.get(unit, set()):
                bad.append(f"{module} -> {dep}")
    return bad


def import_cycles(*roots: Path) -> list[list[str]]:
    """Cycles between the modules of `roots` (each reported once, from its smallest name)."""
    graph, cycles = project_imports(*roots), []

    def visit(start: str, node: str, path: list[str]) -> None:
        for dep in sorted(graph.get(node, ())):
            if dep == start:
                cycles.append(path)
            elif dep > start and dep not in path:
                visit(start, dep, path + [dep])

    for module in sorted(graph):
        visit(module, module, [module])
    return cycles


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def script_walls(pipeline: Path, scripts: Path) -> list[str]:
    """'a -> b' for every import of a test by a script (but SCRIPTS_MAY_IMPORT), and of a script
    or a test by the pipeline, at module level or inside a function; one line per module
    imported (`from m import x` is m)."""
    bad = []
    for m, (path, package) in _modules(pipeline, scripts).items():
        deps = _imported(path, m, package)
        deps = {d for d in deps if d.rpartition(".")[0] not in deps}  # m, not m.x as well
        for dep in sorted(deps):
            if _under(dep, NEVER[m.split(".")[0]]) and not (
                m.startswith("scripts.") and _under(dep, SCRIPTS_MAY_IMPORT)
            ):
                bad.append(f"{m} -> {dep}")
    return bad


def test_every_unit_of_the_pipeline_has_a_rule():
    units = {unit_of(m) for m in project_imports(PIPELINE)} - {""}
    assert units - set(ALLOWED) - ENTRIES == set(), "add the new package to ALLOWED and README"


def test_imports_run_one_way():
    assert forbidden_imports(PIPELINE) == []


def test_no_module_imports_itself_back():
    assert import_cycles(PIPELINE) == []


@pytest.mark.parametrize(
    "module,line,expected",
    [
        (
            "store/locking.py",
            "from pipeline.stages import finetune",
            "pipeline.store.locking -> pipeline.stages.finetune",
        ),
        (
            "metrics/stats.py",
            "    from pipeline.results.points import Arm",
            "pipeline.metrics.stats -> pipeline.results.points",
        ),
        ("stages/generate.py", "import pipeline.run", "pipeline.stages.generate -> pipeline.run"),
    ],
)
def test_a_forbidden_import_fails_the_check(tmp_path, module, line, expected):
    """The check on a copy of pipeline/ with one import added that breaks a wall."""
    import shutil

    copy = tmp_path / "pipeline"
    shutil.copytree(PIPELINE, copy, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    target = copy / module
    body = "def _added():\n" + line + "\n" if line.startswith(" ") else line + "\n"
    target.write_text(target.read_text(encoding="utf-8") + "\n\n" + body, encoding="utf-8")
    assert expected in forbidden_imports(copy)


def test_a_cycle_fails_the_check(tmp_path):
    copy = tmp_path / "pipeline"
    (copy / "metrics").mkdir(parents=True)
    (copy / "__init__.py").write_text("")
    (copy / "metrics" / "__init__.py").write_text("")
    (copy / "metrics" / "a.py").write_text("from pipeline.metrics import b\n")
    (copy / "metrics" / "b.py").write_text("def f():\n    from pipeline.metrics.a import x\n")
    assert import_cycles(copy) == [["pipeline.metrics.a", "pipeline.metrics.b"]]


def test_scripts_import_the_pipeline_and_the_pipeline_no_script():
    assert script_walls(PIPELINE, SCRIPTS) == []


def test_no_cycle_runs_through_the_scripts_or_the_sweeper_plugin():
    assert import_cycles(PIPELINE, SCRIPTS, HYDRA_PLUGINS) == []


def _scripts_copy(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    """A pipeline/ and scripts/ of `files` (path under tmp_path -> source)."""
    for rel, text in {"pipeline/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "scripts").mkdir(exist_ok=True)
    return tmp_path / "pipeline", tmp_path / "scripts"


def test_a_cycle_among_scripts_fails_the_check(tmp_path):
    pipeline, scripts = _scripts_copy(
        tmp_path,
        {
            "scripts/rows.py": "from scripts.checks import verdict\n",
            "scripts/checks.py": "def f():\n    from scripts.rows import Row\n",
        },
    )
    assert import_cycles(pipeline, scripts) == [["scripts.checks", "scripts.rows"]]


def test_a_cycle_through_a_script_and_the_pipeline_fails_the_check(tmp_path):
    pipeline, scripts = _scripts_copy(
        tmp_path,
        {
            "scripts/tool.py": "import pipeline.report\n",
            "pipeline/report.py": "def main():\n    import scripts.tool\n",
        },
    )
    assert import_cycles(pipeline, scripts) == [["pipeline.report", "scripts.tool"]]
    assert script_walls(pipeline, scripts) == ["pipeline.report -> scripts.tool"]


def test_a_script_importing_a_test_or_the_pipeline_a_test_fails_the_walls(tmp_path):
    pipeline, scripts = _scripts_copy(
        tmp_path,
        {
            "scripts/bench.py": "from tests.test_trend import _family\n"
            "from tests.support.composed import composed\nimport pipeline\n",
            "pipeline/stats.py": "from tests.support.points import point\n",
        },
    )
    assert script_walls(pipeline, scripts) == [
        "pipeline.stats -> tests.support.points",
        "scripts.bench -> tests.test_trend",
    ]
