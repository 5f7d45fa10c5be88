"""The architecture holds: layers as folders, imports pointing down, no circles, pure code importable alone.

Layers, bottom up (README "Layout"): ``mediaq.errors``; ``mediaq.pure`` (imaging, IQDB, rating math);
``mediaq.runtime`` (settings, Redis, storage, worker hooks, backends); ``mediaq.jobs``;
``mediaq.client``; ``mediaq.faces``; and the entry points ``mediaq`` (the lazy public API) and
``mediaq.worker``. Every import counts: module level, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import parse_source

import mediaq

PACKAGE = Path(mediaq.__file__).parent
LAYERS = ["mediaq.errors", "mediaq.pure", "mediaq.runtime", "mediaq.jobs", "mediaq.client", "mediaq.faces"]
ENTRY_POINTS = {"mediaq", "mediaq.worker", "mediaq.__main__"}
#: what pure code must never load (checked in a fresh interpreter, module by module)
NOT_IN_PURE = ("arq", "redis", "sqlalchemy", "ipywidgets")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def imports_of(module: str) -> set[str]:
    """The mediaq modules ``module`` imports, anywhere in its file."""
    found = set()
    for node in ast.walk(parse_source(MODULES[module])):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from mediaq.pure import imaging` imports the module mediaq.pure.imaging
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import mediaq.pure.imaging as x` and the like
                name = name.rpartition(".")[0]
            if name.startswith("mediaq") and name != module:
                found.add(name)
    return found


def layer(module: str) -> int:
    if module in ENTRY_POINTS:
        return len(LAYERS)
    for rank, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{module} belongs to no layer: put it in one of {LAYERS}")


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_is_in_a_layer():
    assert {m: layer(m) for m in MODULES}


def test_imports_point_down():
    upward = sorted(f"{m} ({LAYERS[layer(m)] if layer(m) < len(LAYERS) else 'entry point'}) imports {t}"
                    for m, targets in GRAPH.items() for t in targets if layer(t) > layer(m))
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_subpackages_import_nothing_at_import_time():
    """A layer's ``__init__`` stays empty, so importing one module never drags in its siblings."""
    heavy = {m: sorted(GRAPH[m]) for m, p in MODULES.items()
             if p.name == "__init__.py" and m not in ENTRY_POINTS and m != "mediaq.jobs" and GRAPH[m]}
    assert not heavy


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    # the lazy public API and the entry points may import anything; nothing inside imports them back
    inner = {m: {t for t in ts if t not in ENTRY_POINTS} for m, ts in GRAPH.items() if m not in ENTRY_POINTS}
    assert _cycles(inner) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_inside_imports_the_public_api_or_an_entry_point():
    back = sorted(f"{m} imports {t}" for m, ts in GRAPH.items() if m not in ENTRY_POINTS
                  for t in ts if t in ENTRY_POINTS)
    assert not back


PURE = sorted(m for m in MODULES if layer(m) <= LAYERS.index("mediaq.pure"))


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_alone(module: str):
    """In a fresh interpreter, importing a pure module loads none of arq, redis, SQLAlchemy, ipywidgets."""
    code = (f"import importlib, json, sys; importlib.import_module({module!r}); "
            f"print(json.dumps(sorted(m for m in {NOT_IN_PURE!r} if m in sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    assert loaded == []


def test_import_mediaq_is_cheap_and_starts_nothing():
    """``import mediaq`` loads no third-party library at all (the public API is resolved on first use)."""
    code = ("import sys, json; before = set(sys.modules); import mediaq; "
            "print(json.dumps(sorted(m for m in set(sys.modules) - before if not m.startswith('mediaq'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    assert not [m for m in loaded if m.split(".")[0] in ("arq", "redis", "pandas", "numpy", "PIL", "sqlalchemy",
                                                          "ipywidgets", "tqdm", "psutil", "click", "httpx")]


def test_worker_main_process_loads_no_imaging_or_dataframe_library():
    """The worker's main process runs arq's loop and the jobs' event-loop halves: Pillow, NumPy and pandas
    are for the process pool (and the client), so building the worker's settings loads none of them
    (issue 17: a smaller process that takes its first job sooner)."""
    code = ("import json, sys; import mediaq.worker; mediaq.worker.worker_settings(); "
            "print(json.dumps(sorted(m for m in ('pandas', 'numpy', 'PIL') if m in sys.modules)))")
    # an explicit URL that nothing listens on: building the settings must neither connect nor start a server
    env = {**os.environ, "MEDIAQ_REDIS_URL": "redis://127.0.0.1:9"}
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       env=env).stdout)
    assert loaded == []
