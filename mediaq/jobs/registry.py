"""Which job functions exist: every ``@job`` in the public modules of :mod:`mediaq.jobs`, plus
those in ``Settings.job_modules`` (``MEDIAQ_JOB_MODULES=my_pkg.jobs,other``) and in the
``mediaq.jobs`` entry-point group of installed packages. The worker registers them all; the client
checks names against the same list, so a typo fails at enqueue time, not in the worker."""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from types import ModuleType

from mediaq.errors import ConfigError, UnknownJobError
from mediaq.runtime.jobspec import JobSpec
from mediaq.runtime.settings import Settings

__all__ = ["check_job_name", "load_jobs"]


def _builtin_modules() -> list[str]:
    import mediaq.jobs as pkg

    return [f"mediaq.jobs.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
            if not m.name.startswith("_") and m.name != "registry"]


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"cannot import job module {name!r} (from MEDIAQ_JOB_MODULES or an entry point): "
                          f"{exc}. Is it installed, or on PYTHONPATH for the worker too?") from exc


def load_jobs(settings: Settings | None = None) -> dict[str, JobSpec]:
    """Every registered job by name."""
    settings = settings or Settings.load()
    names = _builtin_modules() + list(settings.job_modules)
    names += [ep.value for ep in entry_points(group="mediaq.jobs")]
    jobs: dict[str, JobSpec] = {}
    for module_name in names:
        module = _import(module_name)
        for obj in vars(module).values():
            spec = getattr(obj, "__mediaq_job__", None)
            if isinstance(spec, JobSpec):
                other = jobs.get(spec.name)
                if other is not None and other.coroutine is not spec.coroutine:
                    raise ConfigError(f"two job functions are named {spec.name!r} (second in {module_name})")
                jobs[spec.name] = spec
    return jobs


def check_job_name(name: str, settings: Settings | None = None) -> JobSpec:
    """The spec of job ``name``, or :class:`UnknownJobError` listing what exists."""
    jobs = load_jobs(settings)
    if name not in jobs:
        import difflib

        close = difflib.get_close_matches(name, jobs, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise UnknownJobError(f"no job function named {name!r}.{hint} Registered: {sorted(jobs)}. "
                              "Add your own with @mediaq.job in a module named in MEDIAQ_JOB_MODULES.")
    return jobs[name]
