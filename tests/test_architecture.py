"""The walls of pipeline/: which package may import which, and no import cycle between modules.

Every `import pipeline...` counts, at module level or inside a function: an import moved into a
function to dodge a cycle is still an arrow. README's Architecture section draws the same layers.
Run: python -m pytest -q tests/test_architecture.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"

# What each unit of pipeline/ may import from the project (besides itself). A unit is a package
# (pipeline/<package>/) or a top-level module (pipeline/<module>.py). Lower units first.
ALLOWED: dict[str, set[str]] = {
    "text": set(),  # markdown escaping, logging, log tails: the floor every unit may use
    "registry": set(),  # kinds by name (pipeline/registry.py): the floor too
    "store": {"text"},
    "metrics": {"text"},
    "config": {"text"},
    "data": {"text"},
    "tracking": {"text"},
    "models": {"store", "data", "text"},
    "generation": {"models", "data", "store", "text", "registry"},
    "train": {"models", "data", "store", "config", "text", "registry"},
    "judging": {"models", "data", "store", "config", "metrics", "text", "registry"},
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
        "text",
    },
    "human": {"store", "metrics", "text"},
    "results": {"store", "metrics", "data", "text", "human"},
    "plan": {"stages", "results", "store", "models", "judging", "train", "text"},
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
        "text",
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


def project_imports(root: Path) -> dict[str, set[str]]:
    """module name -> the project modules it imports anywhere in its file (absolute names)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if parts[-1] == "__init__" else name.rpartition(".")[0]
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
        graph[name] = {m for m in found if m == root.name or m.startswith(root.name + ".")}
    modules = set(graph)
    # `from pipeline.x import y` names module pipeline.x.y only where that module exists
    return {m: {i for i in deps if i in modules} - {m} for m, deps in graph.items()}


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


def import_cycles(root: Path) -> list[list[str]]:
    """Cycles between modules (each reported once, from its smallest module name)."""
    graph, cycles = project_imports(root), []

    def visit(start: str, node: str, path: list[str]) -> None:
        for dep in sorted(graph.get(node, ())):
            if dep == start:
                cycles.append(path)
            elif dep > start and dep not in path:
                visit(start, dep, path + [dep])

    for module in sorted(graph):
        visit(module, module, [module])
    return cycles


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
