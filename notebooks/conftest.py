"""nbval session setup for the notebooks: a private embedded server, storage folder and ratings database.

With ``--nbval`` (or ``--nbval-lax``), ``pytest_configure`` creates ``mediaq-nbval-*/`` in the temp folder
and starts mediaq's embedded server in its ``state/`` (a real Valkey on a free loopback port). Kernels
inherit the environment of this process when nbval starts them, so the ``MEDIAQ_*`` variables that point
a notebook at that server are put into ``os.environ`` around the start of each notebook's kernel (and any
other ``MEDIAQ_*`` variable of the user's is hidden then): notebooks and the worker subprocesses they
start all share the private server, while tests collected in the same session never see the variables.
``pytest_unconfigure`` stops workers a failed notebook left behind, stops the server and removes the
folder (``MEDIAQ_NBVAL_KEEP=1`` keeps it for a post-mortem). Without ``--nbval`` nothing happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV_KEEP = "MEDIAQ_NBVAL_KEEP"


class NotebookSandbox:
    """The folder, server and environment the notebooks run against."""

    def __init__(self) -> None:
        from mediaq.runtime.server import EmbeddedServer

        self.root = Path(tempfile.mkdtemp(prefix="mediaq-nbval-"))
        self.state_dir = self.root / "state"
        self.storage = self.root / "media"
        self.storage.mkdir()
        self.server = EmbeddedServer(self.state_dir)
        self.url = self.server.ensure_running()
        self.env = {
            "MEDIAQ_STATE_DIR": str(self.state_dir),
            "MEDIAQ_STORAGE": str(self.storage),
            "MEDIAQ_RATINGS_URL": f"sqlite:///{self.root / 'ratings.sqlite3'}",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        }

    def apply(self) -> dict[str, str | None]:
        """Put the sandbox's variables into ``os.environ``; returns what to restore."""
        saved: dict[str, str | None] = {}
        for key in [k for k in os.environ if k.startswith("MEDIAQ_")]:
            saved[key] = os.environ.pop(key)
        for key, value in self.env.items():
            saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        return saved

    @staticmethod
    def restore(saved: dict[str, str | None]) -> None:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def leftover_workers(self) -> list[object]:
        """Worker processes started for this sandbox that are still running (a notebook failed before
        its last cell stopped them)."""
        import psutil

        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if "arq" in (proc.info["cmdline"] or []) and \
                        proc.environ().get("MEDIAQ_STATE_DIR") == str(self.state_dir):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def close(self) -> None:
        import psutil

        workers = self.leftover_workers()
        for proc in workers:
            proc.terminate()  # arq stops at SIGTERM; its process pool goes with it
        _, alive = psutil.wait_procs(workers, timeout=10)
        for proc in alive:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker runs in a session of its own
            except OSError:
                pass
        self.server.stop()
        if not os.environ.get(ENV_KEEP):
            shutil.rmtree(self.root, ignore_errors=True)


_SANDBOX = pytest.StashKey[NotebookSandbox]()


def _nbval_enabled(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False))


def pytest_configure(config: pytest.Config) -> None:
    if _nbval_enabled(config):
        config.stash[_SANDBOX] = NotebookSandbox()


def pytest_unconfigure(config: pytest.Config) -> None:
    sandbox = config.stash.get(_SANDBOX, None)
    if sandbox is not None:
        sandbox.close()
        del config.stash[_SANDBOX]


def pytest_report_header(config: pytest.Config) -> str | None:
    sandbox = config.stash.get(_SANDBOX, None)
    if sandbox is None:
        return None
    port = sandbox.url.rsplit(":", 1)[1]
    return f"notebooks: private mediaq server on 127.0.0.1:{port}, files in {sandbox.root}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """nbval starts a notebook's kernel while setting up its first cell: give it the sandbox's environment."""
    sandbox = item.config.stash.get(_SANDBOX, None)
    if sandbox is None or item.path.suffix != ".ipynb":
        yield
        return
    saved = sandbox.apply()
    try:
        yield
    finally:
        sandbox.restore(saved)
