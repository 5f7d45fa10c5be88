"""Redis key names live in one module (mediaq.runtime.keys), and arq's there equal arq's own."""

from __future__ import annotations

import ast
from pathlib import Path

import arq.constants
from helpers import parse_source

import mediaq
from mediaq.runtime import keys


def test_arq_names_equal_arqs_own():
    assert keys.DEFAULT_QUEUE == arq.constants.default_queue_name
    assert keys.JOB_PREFIX == arq.constants.job_key_prefix
    assert keys.RESULT_PREFIX == arq.constants.result_key_prefix
    assert keys.IN_PROGRESS_PREFIX == arq.constants.in_progress_key_prefix
    assert keys.RETRY_PREFIX == arq.constants.retry_key_prefix
    assert keys.ABORT_SET == arq.constants.abort_jobs_ss
    assert keys.HEALTH_CHECK_SUFFIX == arq.constants.health_check_key_suffix


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def spelled_keys(path: Path) -> list[str]:
    """String literals (not docstrings) in ``path`` that start like a Redis key of arq's or mediaq's."""
    tree = parse_source(path)
    docs = _docstrings(tree)
    return [f"{path.name}:{node.lineno}: {node.value[:40]!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            and node.value.lstrip("'\"").startswith(("arq:", "mediaq:"))]


def test_no_module_but_keys_spells_a_key():
    package = Path(mediaq.__file__).parent
    found = [hit for path in sorted(package.rglob("*.py")) if path.name != "keys.py" for hit in spelled_keys(path)]
    assert found == []


def test_the_check_sees_a_spelled_key(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""mediaq:batches in a docstring is fine."""\nKEY = "mediaq:batch:x"\nOTHER = f"arq:job:{1}"\n')
    assert len(spelled_keys(sample)) == 2
