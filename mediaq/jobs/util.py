"""Small utility jobs: a no-op and a sleep, for checking a queue end to end and for benchmarks."""

from __future__ import annotations

import asyncio
from typing import Any

from mediaq.errors import ConfigError
from mediaq.runtime.jobspec import job

__all__ = ["noop", "sleep"]


@job(timeout=10)
async def noop(ctx: dict[str, Any], value: Any = None) -> Any:
    """Return ``value`` unchanged: the cheapest possible job (queue overhead only)."""
    return value


@job(timeout=600)  # arq keeps every in-progress key for the longest timeout of any job: keep it short
async def sleep(ctx: dict[str, Any], seconds: float = 1.0) -> float:
    """Sleep ``seconds`` (0 to 590) then return them: a stand-in for a slow job (aborts, dashboards)."""
    if not isinstance(seconds, (int, float)) or not 0 <= seconds <= 590:
        raise ConfigError(f"sleep(seconds={seconds!r}): seconds must be a number from 0 to 590")
    await asyncio.sleep(seconds)
    return float(seconds)
