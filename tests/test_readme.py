"""The README's notebook snippet runs as written (top-level await, as in a notebook cell), from the top
folder and from notebooks/, against this session's server and a real worker."""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"

pytestmark = pytest.mark.timeout(180)


def _snippet(section: str) -> str:
    text = README.read_text()
    body = text[text.index(f"## {section}"):]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


@pytest.mark.parametrize("folder", [".", "notebooks"])
async def test_the_notebook_snippet_runs_as_written(settings, monkeypatch, folder):
    for key, value in settings.to_env().items():  # what a kernel started with these settings sees
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(README.parent / folder)  # a kernel opened on notebooks/ runs there
    code = compile(_snippet("Use it from a notebook"), "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict = {}
    result = eval(code, namespace)  # a coroutine, as a cell with top-level await is
    if isinstance(result, types.CoroutineType):
        await result
    try:
        df = namespace["df"]
        assert len(df) > 0 and set(df["status"]) == {"complete"}
        samples = [p for p in (README.parent / "data").iterdir() if p.suffix in (".jpg", ".png")]
        assert len(namespace["images"]) == len(samples)
        assert not namespace["worker"].alive  # the snippet stops it
    finally:
        namespace["worker"].stop()
        await namespace["client"].close()
