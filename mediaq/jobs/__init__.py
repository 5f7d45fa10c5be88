"""Job functions run by workers. Each public module here holds ``@job`` functions; the worker
registers every one of them (see :mod:`mediaq.jobs.registry`). Job functions are thin: they validate
arguments, call pure code (:mod:`mediaq.pure`) and the runtime (:mod:`mediaq.runtime`), and
return plain data (str, int, float, bool, None, lists and dicts of them)."""

from mediaq.runtime.jobspec import JobSpec, job, resources, run_cpu

__all__ = ["JobSpec", "job", "resources", "run_cpu"]
