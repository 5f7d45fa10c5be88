"""The worker entry point: ``arq mediaq.worker.WorkerSettings``.

Run it on as many machines as you like against one Redis (set ``MEDIAQ_REDIS_URL`` there), or start
one from a notebook with :func:`mediaq.start_worker`. ``WorkerSettings`` is built when first looked up
(not at import: resolving Redis may start the embedded server), from ``MEDIAQ_*`` variables and the
seed defaults, with every registered job (:mod:`mediaq.jobs.registry`). The settings and hooks live
in :mod:`mediaq.runtime.worker`; this module only puts them together with the jobs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WorkerSettings", "worker_settings"]  # noqa: F822 - WorkerSettings is built on lookup


def worker_settings(settings: Any = None, **overrides: Any) -> type:
    """arq's ``WorkerSettings`` class for ``settings`` (default: from ``MEDIAQ_*``) and every registered job."""
    from mediaq.jobs.registry import load_jobs
    from mediaq.runtime.settings import Settings
    from mediaq.runtime.worker import build_worker_settings

    settings = settings or Settings.load()
    if overrides:
        settings = settings.replace(**overrides)
    return build_worker_settings(settings, load_jobs(settings))


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        return worker_settings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
