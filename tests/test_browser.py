"""The dashboard in a real JupyterLab, in headless Chromium (Debian's ``chromium``, driven by playwright).

A private JupyterLab (own runtime, config, settings and workspace folders; a settings file that starts
the default kernel, so no dialog blocks) serves a copy of ``tests/browser/dashboard.ipynb``. Its
kernel inherits ``MEDIAQ_*`` variables for this test's settings, so the notebook's worker and client
use the test server. The test runs all cells from the Run menu, waits until the dashboard shows the
whole batch done, checks that real ipywidgets rendered (not a text or HTML repr), clicks "Retry
failed" in the page, saves a screenshot under ``tests/artifacts/`` and shuts the kernel down, which
stops the notebook's worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import eventually_sync, free_port

from mediaq.runtime import keys
from mediaq.runtime.connections import with_db

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

HERE = Path(__file__).parent
ARTIFACTS = HERE / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


class Lab:
    def __init__(self, base: str, token: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.base, self.token, self.proc, self.log = base, token, proc, log

    def api(self, path: str, method: str = "GET") -> object:
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture
def lab(settings, tmp_path: Path) -> Iterator[Lab]:
    """A private JupyterLab whose kernels use this test's settings; stopped at teardown."""
    root = tmp_path / "lab-root"
    root.mkdir()
    shutil.copy(HERE / "browser" / "dashboard.ipynb", root / "dashboard.ipynb")
    lab_settings = tmp_path / "lab-settings"
    _write_json(lab_settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings",
                {"autoStartDefaultKernel": True})
    _write_json(lab_settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
                {"fetchNews": "false", "checkForUpdates": False})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIAQ_", "JUPYTER"))}
    env.update(settings.replace(worker_processes=1).to_env())
    for name, folder in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                         ("JUPYTER_DATA_DIR", "data"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                         ("IPYTHONDIR", "ipython")):
        env[name] = str(tmp_path / folder)
    env["JUPYTERLAB_SETTINGS_DIR"] = str(lab_settings)
    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyter.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.token={token}", "--allow-root",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--ServerApp.shutdown_no_activity_timeout=600"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=root, start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}"
            with contextlib.suppress(OSError):
                server.api("/api/status")
                break
            assert time.monotonic() < deadline, f"jupyter lab did not answer within 60 s:\n{server.log_tail()}"
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _worker_pids(url: str, db: int) -> list[int]:
    r = redis.Redis.from_url(with_db(url, db))
    try:
        beats = r.zrange(keys.WORKERS, 0, -1)
        return [json.loads(raw)["pid"] for raw in r.mget(beats) if raw] if beats else []
    finally:
        r.close()


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return False


def test_dashboard_in_jupyterlab(lab: Lab, settings, redis_server) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: `apt-get install -y chromium` (tests/run.sh does it)"
    ARTIFACTS.mkdir(exist_ok=True)
    worker_pids: list[int] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"{lab.base}/lab/tree/dashboard.ipynb?token={lab.token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=45_000)
            eventually_sync(lambda: lab.api("/api/sessions"),
                            lambda sessions: sessions and all(s["kernel"]["execution_state"] == "idle"
                                                              for s in sessions),
                            timeout=45, interval=0.2, what="an idle kernel")

            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()  # Run > Run All Cells

            dash = page.locator(".mediaq-dashboard")
            dash.wait_for(timeout=45_000)
            _shows(dash, "40/40 done (100.0%) · 2 failed · finished", timeout=45)
            text = dash.inner_text()
            assert "batch browser-demo" in text and "nb38" in text and "nb39" in text
            assert "ConfigError" in text and "seconds must be a number" in text
            # real widgets (ipywidgets 8 views), not the text/html fallback
            assert dash.locator(".widget-hprogress").count() == 1
            assert dash.locator(".jupyter-button").count() == 4
            assert dash.locator(".widget-html-content").count() >= 8
            assert dash.locator("svg.mediaq-sparkline polyline").count() == 2
            assert page.locator(".mediaq-snapshot").count() == 0  # the static snapshot is not what shows
            worker_pids = _worker_pids(redis_server.url, settings.queue_db)
            assert len(worker_pids) == 1 and f"pid {worker_pids[0]} alive" in text

            # a click in the page reaches the kernel: the failed jobs are retried (and fail again)
            dash.locator(".jupyter-button", has_text="Retry failed").click()
            _shows(dash, "retried 2 failed job(s)", timeout=30)
            _shows(dash, "nb39~r1", timeout=30)
            _shows(dash, "40/40 done", timeout=30)
            dash.screenshot(path=str(ARTIFACTS / "dashboard.png"))
        finally:
            browser.close()

    # shutting the kernel down stops the notebook's worker
    for session in lab.api("/api/sessions"):  # type: ignore[union-attr]
        lab.api(f"/api/sessions/{session['id']}", method="DELETE")
    stuck = [pid for pid in worker_pids if not _gone(pid, timeout=20)]
    for pid in stuck:
        os.kill(pid, signal.SIGKILL)
    assert not stuck, f"the notebook's worker {stuck} outlived its kernel"


def _shows(locator, needle: str, timeout: float) -> str:
    """Wait until the element's text contains ``needle``; returns the text."""
    return eventually_sync(locator.inner_text, lambda text: needle in text, timeout=timeout, interval=0.25,
                           what=f"the dashboard showing {needle!r}")
