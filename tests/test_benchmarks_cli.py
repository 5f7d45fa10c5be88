"""``python -m benchmarks``: what its options promise (the figures themselves are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_json_prints_json_alone_on_stdout():
    """``--json`` output goes to programs (``| jq``): progress and notes belong on stderr, including
    what a benchmark prints itself (the dashboard benchmark prints how fast it filled the queues)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--json", "--quick", "--only", "dashboard"],
                          cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    assert rows and all({"metric", "mediaq", "baseline", "ratio", "unit"} <= set(r) for r in rows)
    assert "# dashboard" in done.stderr and "# queues filled" in done.stderr
