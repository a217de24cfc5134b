"""The pipeline's shape, checked: imports go one way, and nothing imports in a cycle.

Every ``import`` of the package is read from the source (lazy ones inside
functions and ``TYPE_CHECKING`` blocks too: a cycle hidden in a function is
still a cycle). Each module may import only what its stage allows; the
table below is the architecture sketch in the README, made checkable.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pytest_llmperf

PACKAGE = Path(pytest_llmperf.__file__).parent
LEAVES = ("pytest_llmperf.records", "pytest_llmperf.errors")

PYTEST_PACKAGE = "pytest_llmperf.pytest"
ENTRY = "pytest_llmperf.pytest.plugin"
"""The ``pytest11`` entry point: pytest imports it, no module does."""

# module or package prefix -> prefixes it may import (besides itself, for a package)
ALLOWED: dict[str, tuple[str, ...]] = {
    "pytest_llmperf.records": (),
    "pytest_llmperf.errors": (),
    "pytest_llmperf.schema": LEAVES,
    "pytest_llmperf.measure": LEAVES,
    "pytest_llmperf.telemetry": LEAVES,
    "pytest_llmperf.servers": LEAVES,
    "pytest_llmperf.judge": (*LEAVES, "pytest_llmperf.schema", "pytest_llmperf.measure"),
    "pytest_llmperf.output": (*LEAVES, "pytest_llmperf.schema"),
    "pytest_llmperf.testing": (*LEAVES, "pytest_llmperf.measure", "pytest_llmperf.servers"),
    "pytest_llmperf.config": (*LEAVES, "pytest_llmperf.servers"),
    # The fixture object (a module or a package): typed requests in, points measured, cases recorded.
    "pytest_llmperf.perf": (
        *LEAVES,
        "pytest_llmperf.schema",
        "pytest_llmperf.config",
        "pytest_llmperf.measure",
        "pytest_llmperf.judge",
        "pytest_llmperf.output",
        "pytest_llmperf.servers",
        "pytest_llmperf.telemetry",
        "pytest_llmperf.sweeps",
    ),
    # Sweeps and capacity searches: the fixture object's loop over loads (perf's own stages).
    "pytest_llmperf.sweeps": (
        *LEAVES,
        "pytest_llmperf.schema",
        "pytest_llmperf.measure",
        "pytest_llmperf.judge",
        "pytest_llmperf.servers",
        "pytest_llmperf.telemetry",
    ),
    # The command line (compare and re-render saved runs): reads JSON, judges, writes reports.
    "pytest_llmperf.cli": (*LEAVES, "pytest_llmperf.schema", "pytest_llmperf.judge", "pytest_llmperf.output"),
    "pytest_llmperf.__main__": ("pytest_llmperf.cli",),
    # Everything that knows pytest: every stage below it, never the instruments of testing/.
    PYTEST_PACKAGE: (
        *LEAVES,
        "pytest_llmperf.schema",
        "pytest_llmperf.config",
        "pytest_llmperf.measure",
        "pytest_llmperf.judge",
        "pytest_llmperf.output",
        "pytest_llmperf.servers",
        "pytest_llmperf.telemetry",
        "pytest_llmperf.perf",
        "pytest_llmperf.sweeps",
    ),
    "pytest_llmperf": LEAVES,  # __init__
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> set[str]:
    """The package modules ``module`` imports, anywhere in its source."""
    tree = ast.parse(MODULES[module].read_text("utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        else:
            continue
        found.update(n for n in names if n == "pytest_llmperf" or n.startswith("pytest_llmperf."))
    found.discard(module)
    return found


def imports_pytest(module: str) -> bool:
    tree = ast.parse(MODULES[module].read_text("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "pytest" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pytest":
            return True
    return False


GRAPH = {module: imports_of(module) for module in MODULES}


def rule_for(module: str) -> str:
    """The most specific entry of ``ALLOWED`` that covers ``module``."""
    covering = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    return max(covering, key=len)


def within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def violations(module: str, targets: set[str]) -> list[str]:
    """The imports in ``targets`` that ``module``'s stage does not allow."""
    rule = rule_for(module)
    is_package = MODULES[module].name == "__init__.py"
    own = rule if is_package or rule != module else rule.rsplit(".", 1)[0]
    allowed = ALLOWED[rule] if own == "pytest_llmperf" else (*ALLOWED[rule], own)
    return sorted(t for t in targets if t == ENTRY or not any(within(t, prefix) for prefix in allowed))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_what_its_stage_allows(module: str) -> None:
    assert violations(module, GRAPH[module]) == [], f"{module} ({rule_for(module)} stage)"


def test_only_the_pytest_glue_imports_pytest() -> None:
    assert imports_pytest(ENTRY)  # the checker sees an import of pytest
    assert sorted(m for m in MODULES if imports_pytest(m) and not within(m, PYTEST_PACKAGE)) == []


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(module: str) -> list[str]:
    """The ``_private`` names ``module`` takes from another package module: imported by name
    (``from pytest_llmperf.x import _y``), or read off an imported module (``x._y``)."""
    tree = ast.parse(MODULES[module].read_text("utf-8"))
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> the package module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not within(node.module, "pytest_llmperf"):
                continue
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in MODULES:
                    modules[alias.asname or alias.name] = target
                elif private(alias.name):
                    found.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if within(alias.name, "pytest_llmperf") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and private(node.attr):
            bound = modules.get(node.value.id)
            if bound is not None and bound != module:
                found.append(f"{bound}.{node.attr}")
    return sorted(set(found))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(module: str) -> None:
    assert private_uses(module) == []


def test_the_private_name_checker_sees_both_forms(tmp_path: Path) -> None:
    source = (
        "from pytest_llmperf.measure import stats\n"
        "from pytest_llmperf.judge.verdict import _hidden\n"
        "stats._inner(1)\n"
        "stats.public(1)\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(source, "utf-8")
    MODULES["probe"] = path
    try:
        assert private_uses("probe") == [
            "pytest_llmperf.judge.verdict._hidden",
            "pytest_llmperf.measure.stats._inner",
        ]
    finally:
        del MODULES["probe"]


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if target not in MODULES:
                continue
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("pytest_llmperf.perf", "pytest_llmperf.pytest.session"),
        ("pytest_llmperf.perf", "pytest_llmperf.pytest.plugin"),
        ("pytest_llmperf.measure.client", "pytest_llmperf.servers.base"),
        ("pytest_llmperf.measure.runner", "pytest_llmperf.pytest.session"),
        ("pytest_llmperf.judge.verdict", "pytest_llmperf.output.report"),
        ("pytest_llmperf.output.report", "pytest_llmperf.judge.verdict"),
        ("pytest_llmperf.judge.evidence", "pytest_llmperf.pytest.gate"),
        ("pytest_llmperf.judge.evidence", "pytest_llmperf.config"),
        ("pytest_llmperf.testing.harness", "pytest_llmperf.pytest.session"),
        ("pytest_llmperf.pytest.session", "pytest_llmperf.pytest.plugin"),
        ("pytest_llmperf.pytest.gate", "pytest_llmperf.testing.harness"),
        ("pytest_llmperf.records", "pytest_llmperf.errors"),
    ],
)
def test_the_checker_refuses_an_upward_import(module: str, target: str) -> None:
    assert violations(module, {target}) == [target]


def test_the_checker_allows_the_downward_ones() -> None:
    assert violations("pytest_llmperf.perf", {"pytest_llmperf.measure.runner", "pytest_llmperf.judge"}) == []
    assert (
        violations("pytest_llmperf.pytest.session", {"pytest_llmperf.perf", "pytest_llmperf.pytest.gate"})
        == []
    )
    assert violations("pytest_llmperf.output.benchjson", {"pytest_llmperf.schema"}) == []
