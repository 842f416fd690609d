"""The layout stays true: the import contracts in pyproject.toml hold (import-linter), a
deliberate back-arrow breaks them, no import cycle exists, and no infra module outgrows 600 lines.

The import root ``chargemesh`` is mapped onto the top-level folders (setuptools package-dir), so
the contracts are checked on a copy of the tree in the installed layout (what a wheel holds).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
MAPPED = ("schemas", "streams", "processors", "sinks", "infra")
INFRA_MODULE_LINES_MAX = 600
LINT_TIMEOUT_S = 120


def installed_layout(root: Path) -> Path:
    """The package as a wheel lays it out: chargemesh/ (the root) with its subpackages."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "_root")
    package = root / "chargemesh"
    shutil.copytree(REPO / "infra" / "_root", package, ignore=skip)
    for name in MAPPED:
        shutil.copytree(REPO / name, package / name, ignore=skip)
    return root


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT_IMPORTS, str(REPO / "pyproject.toml")], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=LINT_TIMEOUT_S, check=False)


def test_the_import_contracts_hold(tmp_path: Path) -> None:
    done = lint(installed_layout(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "source", "broken"), [
    ("processors/ledger/back_arrow.py", "from chargemesh.infra import config\n", "Layers"),
    ("sinks/back_arrow.py", "import chargemesh.infra.config\n", "Layers"),
    ("streams/back_arrow.py", "from chargemesh.processors import reasons\n", "Layers"),
    ("processors/ledger/clock.py", "import time\n", "Pure domain"),
    ("processors/grid/kafka.py", "import confluent_kafka\n", "Pure domain"),
])
def test_a_deliberate_back_arrow_breaks_a_contract(tmp_path: Path, module: str, source: str,
                                                    broken: str) -> None:
    root = installed_layout(tmp_path)
    (root / "chargemesh" / module).write_text(source)
    done = lint(root)
    assert done.returncode != 0
    assert "1 kept, 1 broken" in done.stdout
    assert f"{broken}" in done.stdout.split("Broken contracts")[1]


_CYCLES = """
import json, grimp
graph = grimp.build_graph("chargemesh")
modules = sorted(graph.modules)
index, low, on, stack, cycles, counter = {}, {}, set(), [], [], [0]
for start in modules:
    if start in index:
        continue
    work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
    index[start] = low[start] = counter[0]; counter[0] += 1; stack.append(start); on.add(start)
    while work:
        node, children = work[-1]
        child = next(children, None)
        if child is not None:
            if child not in index:
                index[child] = low[child] = counter[0]; counter[0] += 1
                stack.append(child); on.add(child)
                work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
            elif child in on:
                low[node] = min(low[node], index[child])
            continue
        work.pop()
        if work:
            low[work[-1][0]] = min(low[work[-1][0]], low[node])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop(); on.discard(member); component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))
print(json.dumps({"modules": len(modules), "cycles": cycles}))
"""


def test_no_module_imports_itself_back(tmp_path: Path) -> None:
    root = installed_layout(tmp_path)
    done = subprocess.run([sys.executable, "-c", _CYCLES], cwd=root,
                          env={"PYTHONPATH": str(root)}, capture_output=True, text=True,
                          timeout=LINT_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert found["modules"] > 100  # the whole tree was read, not the root package alone
    assert found["cycles"] == []


def test_no_infra_module_is_over_600_lines() -> None:
    sizes = {str(path.relative_to(REPO)): len(path.read_text().splitlines())
             for path in (REPO / "infra").rglob("*.py")}
    assert len(sizes) > 20
    assert {name: n for name, n in sizes.items() if n > INFRA_MODULE_LINES_MAX} == {}


def test_lint_imports_passes_as_a_developer_runs_it() -> None:
    """`lint-imports` from the repository root, on the package as infra/setup.sh installed it
    (non-editable: a mapped editable install hides the subpackages from import-linter)."""
    done = subprocess.run([LINT_IMPORTS], cwd=REPO, capture_output=True, text=True,
                          timeout=LINT_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 kept, 0 broken" in done.stdout
