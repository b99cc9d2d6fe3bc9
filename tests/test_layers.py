"""The run path's layering, read from the source: imports go downward only (no circles, lazy imports
included), no module grows past 400 lines, and what a cell's or a trial's process imports stays light."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import bench

ROOT = Path(bench.__file__).parent
MAX_LINES = 400

# the run path, top to bottom (docs/architecture.md, "Where things live"); a module may import from its own layer and the
# ones below it, never from one above
LAYERS = [
    ["bench.cli"],
    ["bench.api"],
    ["bench.runner", "bench.tune.waves"],
    ["bench.tune.contender"],
    ["bench.session", "bench.executors"],
    ["bench.attempt"],
    ["bench.worker"],
    ["bench.execute"],
    ["bench.network", "bench.prepare", "bench.tune.pruning"],
    ["bench.train"],
    ["bench.loop", "bench.evaluate"],
    ["bench.store", "bench.cell", "bench.config", "bench.errors", "bench.claims", "bench.progress",
     "bench.environment", "bench.device"],
]


def _module(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


MODULES = {_module(p): p for p in ROOT.rglob("*.py")}


def _owner(name: str) -> str | None:
    """The bench module an import names (`from bench.store import RUN` names bench.store)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports(module: str, top_level_only: bool = False) -> frozenset[str]:
    tree = ast.parse(MODULES[module].read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        found.update(o for n in names if n.startswith("bench.") and (o := _owner(n)) not in (None, module, "bench"))
    return frozenset(found)


def test_no_import_circles_even_through_lazy_imports():
    seen: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for n in sorted(imports(m)):
            if seen.get(n) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(n):] + [m, n]))
            if n not in seen:
                visit(n, path + [m])
        seen[m] = 2

    for m in sorted(MODULES):
        if m not in seen:
            visit(m, [])


@pytest.mark.parametrize("layer", range(1, len(LAYERS)))  # the top layer has none above it
def test_the_run_path_imports_only_downward(layer):
    above = {m for upper in LAYERS[:layer] for m in upper}
    for module in LAYERS[layer]:
        upward = sorted(n for n in imports(module) if n in above or any(n.startswith(a + ".") for a in above))
        assert not upward, f"{module} imports upward: {upward}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_400_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it along its concerns"


def _loaded_by(module: str) -> set[str]:
    """Every bench module that importing `module` loads (top-level imports, and each package's __init__)."""
    out, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in out:
            continue
        out.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in MODULES]
        todo += imports(m, top_level_only=True)
    return out


def test_a_trial_process_never_loads_the_tuning_orchestrator():
    loaded = _loaded_by("bench.tune.pruning") | _loaded_by("bench.execute")
    assert not loaded & {"bench.tune.waves", "bench.tune.contender", "bench.tune.space", "bench.executors",
                         "bench.runner", "bench.api"}


def test_a_report_loads_nothing_of_training():
    loaded = _loaded_by("bench.report")
    assert not loaded & {"bench.train", "bench.execute", "bench.metrics", "bench.cost", "bench.network"}


def test_the_architecture_page_names_every_module_and_package():
    page = (ROOT.parent / "docs" / "architecture.md").read_text()
    section = page[page.index("## Where things live"):]
    named = [f"bench/{p.name}/" if p.is_dir() else f"bench/{p.name}" for p in sorted(ROOT.iterdir())
             if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").is_file()]
    missing = [n for n in named if n not in section]
    assert not missing, f"docs/architecture.md 'Where things live' does not name {missing}"
