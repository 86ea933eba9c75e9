"""tasks/common is split by concern, and dependencies point one way: the runtime (what a run
executes) imports neither the reporting (tables, plots, dashboards) nor the launch plumbing."""

import ast
from pathlib import Path

import pytest

COMMON = Path(__file__).resolve().parents[2] / "tasks" / "common"
FORBIDDEN = ("tasks.common.reporting", "tasks.common.launch")


def imported_modules(source: str, package: str) -> list[str]:
    """Every module a source file imports (module-level or inside functions), absolute names.

    Args:
        source: the file's text.
        package: its package (``tasks.common.runtime``), to resolve relative imports.
    """
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def forbidden_imports(source: str, package: str) -> list[str]:
    return [
        name
        for name in imported_modules(source, package)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]


def test_checker_catches_every_import_form():
    package = "tasks.common.runtime"
    for bad in (
        "import tasks.common.reporting.tables",
        "from tasks.common.reporting.plots import plot_run_mask",
        "from tasks.common import launch",
        "def f():\n    from ..reporting import tables",
        "from ..launch.compose import compose_config",
    ):
        assert forbidden_imports(bad, package), bad
    assert not forbidden_imports("from tasks.common.runtime.results import write_json", package)
    assert not forbidden_imports("from . import results\nimport tasks.common.runtime", package)


@pytest.mark.parametrize("file", sorted((COMMON / "runtime").glob("*.py")), ids=lambda p: p.name)
def test_runtime_imports_neither_reporting_nor_launch(file):
    found = forbidden_imports(file.read_text(), "tasks.common.runtime")
    assert not found, f"{file.relative_to(COMMON.parents[1])} imports {found}"


def test_every_module_lives_in_a_concern():
    """No module directly under tasks/common: each belongs to runtime, reporting or launch."""
    loose = [p.name for p in COMMON.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside tasks/common/{{runtime,reporting,launch}}: {loose}"
    assert len(list((COMMON / "runtime").glob("*.py"))) > 5
