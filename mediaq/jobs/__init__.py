"""Job functions run by workers. Each public module here holds ``@job`` functions; the worker
registers every one of them (see :mod:`mediaq.registry`). Job functions are thin: they validate
arguments, call pure code (:mod:`mediaq.imaging`, :mod:`mediaq.iqdb`, :mod:`mediaq.ratings`) and
return plain data (str, int, float, bool, None, lists and dicts of them)."""

from mediaq.jobs._base import JobSpec, job, resources, run_cpu

__all__ = ["JobSpec", "job", "resources", "run_cpu"]
