"""The public API is exactly ``mediaq.__all__``: sorted, every name resolves, and the notebooks use nothing else."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

import mediaq

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
FUNCTIONS = ["connect", "connect_sync", "dashboard", "enqueue_job"]


def test_all_is_sorted_and_matches_the_exports():
    assert mediaq.__all__ == sorted(mediaq.__all__)
    assert set(mediaq.__all__) == set(mediaq._EXPORTS) | {"__version__", *FUNCTIONS}


@pytest.mark.parametrize("name", mediaq.__all__)
def test_each_public_name_resolves_to_its_module(name):
    value = getattr(mediaq, name)
    if name in mediaq._EXPORTS:
        assert value is getattr(importlib.import_module(mediaq._EXPORTS[name]), name)


def test_public_names_are_the_modules_public_names():
    """What ``dir(mediaq)`` shows without underscore is ``__all__`` (no helper leaks into the API)."""
    shown = {n for n in dir(mediaq) if not n.startswith("_")}
    layers = {"client", "errors", "faces", "jobs", "pure", "runtime", "worker"}  # subpackages, once imported
    helpers = {"annotations", "importlib", "TYPE_CHECKING", "Any"}
    assert shown - layers - helpers == set(mediaq.__all__) - {"__version__"}


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mediaq.nope  # noqa: B018


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_use_only_the_public_api(notebook):
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    source = "\n".join("".join(c["source"]) for c in cells)
    imported = re.findall(r"^\s*(?:from|import)\s+(mediaq[\w.]*)", source, re.M)
    assert set(imported) <= {"mediaq"}, imported
    used = set(re.findall(r"\bmediaq\.(\w+)", source))
    assert used <= set(mediaq.__all__), used - set(mediaq.__all__)
