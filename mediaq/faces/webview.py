"""``mediaq dashboard``: the queue view in a browser tab, for people outside a notebook.

It is the notebook's own dashboard (:class:`mediaq.faces.widgets.Dashboard` over a
:class:`~mediaq.client.monitor.Monitor`), served by Voilà from the one-cell notebook beside this
module: Voilà runs it in a kernel and renders its ipywidgets in the page, so the tab shows and does
exactly what the notebook view does (live counts, batches, throughput, workers, failures grouped by
error, the buttons, the job search) with no second implementation. It listens on 127.0.0.1 only and
asks for a token; a pre-heated kernel has the first numbers ready before the page is opened.

>>> cmd = voila_command(port=8866, token="t")           # doctest: +ELLIPSIS
>>> cmd[1:4], "--Voila.ip=127.0.0.1" in cmd, "--token=t" in cmd
(['-m', 'voila', '...webview.ipynb'], True, True)
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from mediaq.errors import ConfigError
from mediaq.runtime.settings import Settings

__all__ = ["NOTEBOOK", "dashboard_env", "serve", "voila_command"]

#: The notebook Voilà serves.
NOTEBOOK = Path(__file__).with_name("webview.ipynb")


def voila_command(port: int, token: str) -> list[str]:
    """The Voilà command line: loopback only, a token, one pre-heated kernel, no source cells shown."""
    return [sys.executable, "-m", "voila", str(NOTEBOOK), "--no-browser", f"--port={port}",
            "--Voila.ip=127.0.0.1", f"--token={token}", "--Voila.port_retries=0", "--strip_sources=True",
            "--preheat_kernel=True", "--pool_size=1",
            "--show_tracebacks=True"]


def dashboard_env(settings: Settings, batch: str | None, interval: float) -> dict[str, str]:
    """The environment of the Voilà server (its kernels inherit it): the settings as ``MEDIAQ_*``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAQ_")}
    env.update(settings.to_env())
    env["MEDIAQ_DASHBOARD_BATCH"] = batch or ""
    env["MEDIAQ_DASHBOARD_INTERVAL"] = str(interval)
    return env


def serve(settings: Settings, *, port: int = 8866, token: str | None = None, batch: str | None = None,
          interval: float = 1.0) -> int:
    """Run the dashboard server in the foreground until Ctrl-C; returns its exit code."""
    try:
        import voila  # noqa: F401
    except ImportError:
        raise ConfigError("the browser dashboard needs Voilà: pip install 'mediaq[notebooks]'") from None
    token = token or secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}/?token={token}"
    print(f"mediaq dashboard: {url}\n(loopback only; the token is the password; Ctrl-C stops it)", flush=True)
    proc = subprocess.Popen(voila_command(port, token), env=dashboard_env(settings, batch, interval))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
