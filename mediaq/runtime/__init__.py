"""Layer 2, the runtime: settings, Redis key names and connections, the embedded server, Lua scripts
over arq's keys, serialization, storage, the worker's settings and hooks, recovery of dead workers,
live counters, the local worker process, and the IQDB and ratings backends.

Imports only :mod:`mediaq.errors` and :mod:`mediaq.pure` from mediaq.
"""
