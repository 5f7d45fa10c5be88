"""Run every benchmark against a fresh embedded server and print one table.

    python -m benchmarks                 # all, full size
    python -m benchmarks --quick         # smaller sizes
    python -m benchmarks --only queue    # one benchmark (benchmarks/bench_queue.py)
    python -m benchmarks --json          # rows as a JSON list: metric, mediaq, baseline, ratio, unit

Columns: metric, mediaq, baseline, ratio (above 1 means mediaq is better), unit, baseline name.
Progress and notes go to stderr; with ``--json`` stdout carries the JSON alone (whatever a benchmark,
or a process it starts, writes to stdout goes to stderr).
Not run by CI: timings belong here, never in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pkgutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from benchmarks._harness import BenchContext
from mediaq.runtime.server import EmbeddedServer
from mediaq.runtime.settings import Settings


def discover() -> list[str]:
    import benchmarks

    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__)
                  if m.name.startswith("bench_"))


def format_table(rows: list[dict]) -> str:
    header = ["metric", "mediaq", "baseline", "ratio", "unit", "baseline name"]
    body = [[r["metric"], f"{r['mediaq']:.4g}", f"{r['baseline']:.4g}", f"{r['ratio']:.2f}x", r["unit"],
             r.get("baseline_name", "")] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in body]
    return "\n".join(lines)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send stdout to stderr for the duration, at the file-descriptor level too, so that child
    processes and C code cannot write to the real stdout either."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=discover(), help="run only this benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (minutes, not tens of minutes)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    names = args.only or discover()
    rows: list[dict] = []
    failed = False
    quiet = stdout_to_stderr() if args.json else contextlib.nullcontext()
    with quiet, tempfile.TemporaryDirectory(prefix="mediaq-bench-") as tmp:
        state = Path(tmp) / "state"
        server = EmbeddedServer(state)
        try:
            server.ensure_running()
            settings = Settings.load(env={}, state_dir=state, storage=Path(tmp) / "media")
            for name in names:
                ctx = BenchContext(settings=settings, tmp=Path(tmp) / name, quick=args.quick)
                ctx.tmp.mkdir(parents=True, exist_ok=True)
                ctx.flush()
                module = importlib.import_module(f"benchmarks.bench_{name}")
                started = time.perf_counter()
                print(f"# {name} ...", file=sys.stderr, flush=True)
                try:
                    produced = module.run(ctx)
                except Exception:
                    failed = True
                    traceback.print_exc()
                    continue
                for r in produced:
                    r["benchmark"] = name
                rows += produced
                print(f"# {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        finally:
            server.stop()
    if args.json:
        print(json.dumps([{k: r[k] for k in ("metric", "mediaq", "baseline", "ratio", "unit")} for r in rows],
                         indent=1))
    else:
        print(format_table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
