"""The project's metadata: conda and pip name the same packages; importing starts nothing."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"redis-py": "redis", "msgpack-python": "msgpack", "matplotlib-base": "matplotlib"}
NOT_PACKAGES = {"python", "pip"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = {_name(r) for r in project["dependencies"]}
    for extra in ("test", "notebooks"):
        pip |= {_name(r) for r in project["optional-dependencies"][extra]}
    conda = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:"):].splitlines():
        m = re.match(r"^\s+- ([A-Za-z0-9_.-]+)", line)
        if m and m.group(1) not in NOT_PACKAGES:
            name = _name(m.group(1))
            conda.add(CONDA_NAMES.get(name, name))
    assert pip == conda, f"only in pyproject: {pip - conda}; only in environment.yml: {conda - pip}"


def test_import_starts_nothing(tmp_path):
    import subprocess
    import sys

    code = ("import os, mediaq, psutil; "
            "print(len(psutil.Process().children()), os.path.exists(os.environ['MEDIAQ_STATE_DIR']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"MEDIAQ_STATE_DIR": str(tmp_path / "s"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["0", "False"]


def test_dashboard_export_stays_callable_after_importing_the_widgets():
    import mediaq.faces.widgets

    assert callable(mediaq.dashboard) and mediaq.dashboard.__module__ == "mediaq"
