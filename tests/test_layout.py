"""The package layout reads as the data flow, and the code habits hold (run by the README's test command).

Layers, bottom to top: ``core`` → ``io`` → ``sim`` → ``acquisition`` → ``localization`` → ``analysis`` →
``training`` → ``outputs`` → ``engine`` → ``batch`` → ``gui`` → ``embed`` → ``cli``. A module imports only from its own layer or
below (lazy imports inside functions included), and no two modules import each other, even indirectly.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rtsmlm"
LAYERS = ["core", "io", "sim", "acquisition", "localization", "analysis", "training", "outputs", "engine", "batch",
          "gui", "embed", "cli"]
TOP_LEVEL = {"rtsmlm", "rtsmlm.__main__"}  # the package itself and ``python -m rtsmlm``
STRICT_TYPED = ["rtsmlm/engine/listener.py", "rtsmlm/engine/relay.py", "rtsmlm/engine/watchdog.py",
                "rtsmlm/engine/summary.py", "rtsmlm/engine/pipeline.py", "rtsmlm/acquisition/ring.py",
                "rtsmlm/acquisition/source.py", "rtsmlm/acquisition/registry.py"]
"""The engine core, checked by ``mypy --strict``."""


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every rtsmlm module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and target != "rtsmlm":
                out.add(target)
    return out


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


def test_every_module_lives_in_a_layer() -> None:
    stray = [m for m in _modules() if m not in TOP_LEVEL and m.split(".")[1] not in LAYERS]
    assert stray == [], f"modules outside the layer packages {LAYERS}: {stray}"


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    mods = _modules()
    upward = sorted(f"{m} -> {t}" for m in mods if m not in TOP_LEVEL for t in _imports(m, mods[m], mods)
                    if t not in TOP_LEVEL and _layer(t) > _layer(m))
    assert upward == [], "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    # Tarjan's strongly connected components; any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in graph:
        if m not in index:
            visit(m)
    assert cycles == [], f"import cycles: {cycles}"


@pytest.mark.parametrize("package", LAYERS)
def test_each_package_imports_alone_without_heavy_optional_parts(package: str) -> None:
    """``import rtsmlm.<package>`` in a fresh interpreter works and pulls in neither torch nor Qt
    (optional heavy parts are imported lazily, where they are used)."""
    code = (f"import sys, rtsmlm.{package}; heavy = [m for m in ('torch', 'PyQt5', 'tensorrt', 'pycromanager') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' installs it")
    return found


def test_ruff_finds_nothing() -> None:
    proc = subprocess.run([_tool("ruff"), "check", "rtsmlm", "tests", "benchmarks", "plugins"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow  # mypy's first run builds its cache: ~30 s
def test_mypy_strict_on_the_engine_core() -> None:
    proc = subprocess.run([_tool("mypy"), "--strict", *STRICT_TYPED], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
