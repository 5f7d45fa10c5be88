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

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

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


def _run_new_cell(page, code: str):
    """Add a cell at the end of the notebook, type ``code`` into it and run it (Shift+Enter), as a person
    does; returns the cell's locator."""
    cells = page.locator(".jp-Notebook .jp-Cell")
    count = cells.count()
    cells.last.locator(".jp-InputPrompt").click()  # select the last cell (command mode)
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # a new cell below
    eventually_sync(cells.count, lambda n: n == count + 1, timeout=10, what="a new cell")
    cells.last.locator(".cm-content").click()  # edit mode
    page.keyboard.insert_text(code)  # no key events: the editor does not close brackets on its own
    page.keyboard.press("Shift+Enter")  # at the end of the notebook this adds another empty cell
    return cells.nth(count)


def _sync_client(settings):
    import mediaq

    return mediaq.connect_sync(settings=settings)


def test_dashboard_in_jupyterlab(lab: Lab, settings, redis_server) -> None:
    """Run all cells, let the batch finish, run more cells, then click as people click: Retry failed,
    Stop worker, Start worker, Retry failed again, and Abort queued on a big batch; each click is
    checked in Redis. Then a kernel restart stops the worker the kernel started."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: `apt-get install -y chromium` (tests/run.sh does it)"
    ARTIFACTS.mkdir(exist_ok=True)
    r = redis.Redis.from_url(with_db(redis_server.url, settings.queue_db))
    sync = _sync_client(settings)
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

            dash = page.locator(".mediaq-dashboard").first
            dash.wait_for(timeout=45_000)
            _shows(dash, "40/40 done (100.0%) · 2 failed · finished", timeout=45)
            text = dash.inner_text()
            assert "batch browser-demo" in text and "nb38" in text and "nb39" in text
            assert "ConfigError" in text and "seconds must be a number" in text
            # real widgets (ipywidgets 8 views), not the text/html fallback
            assert dash.locator(".widget-hprogress").count() == 1
            # 4 actions, a failure group, Look up (Pause is there for bulk batches only)
            assert dash.locator(".jupyter-button:visible").count() == 6
            assert dash.locator(".widget-html-content").count() >= 8
            assert dash.locator("svg.mediaq-sparkline polyline").count() == 2
            assert page.locator(".mediaq-snapshot").count() == 0  # the static snapshot is not what shows
            first_pid = _worker_pids(redis_server.url, settings.queue_db)
            assert len(first_pid) == 1 and f"pid {first_pid[0]} alive" in text

            # a person runs another cell once the batch is done, then clicks
            cell = _run_new_cell(page, "await batch.status()")
            _shows(cell, "'failed': 2", timeout=30)
            dash.locator(".jupyter-button", has_text="Retry failed").click()
            _shows(dash, "retried 2 failed job(s)", timeout=30)
            assert _retries(r, "browser-demo") == {"nb38": "nb38~r1", "nb39": "nb39~r1"}
            eventually_sync(lambda: r.exists("arq:result:nb38~r1", "arq:result:nb39~r1"), lambda n: n == 2,
                            timeout=30, what="the retried jobs run by the worker")
            _shows(dash, "nb39~r1", timeout=30)

            # Stop worker, then Start worker: a new process, alive in Redis
            dash.locator(".jupyter-button", has_text="Stop worker").click()
            _shows(dash, f"stopped worker {first_pid[0]}", timeout=30)
            assert _gone(first_pid[0], timeout=20)
            dash.locator(".jupyter-button", has_text="Start worker").click()
            _shows(dash, "started worker", timeout=60)
            pids = eventually_sync(lambda: _worker_pids(redis_server.url, settings.queue_db),
                                   lambda p: len(p) == 1 and p != first_pid, timeout=30, what="the new worker")
            _shows(dash, f"pid {pids[0]} alive", timeout=30)
            # ... and Retry failed works after Stop and Start too
            dash.locator(".jupyter-button", has_text="Retry failed").click()
            _shows(dash, "retried 2 failed job(s)", timeout=30)
            assert _retries(r, "browser-demo")["nb38~r1"] == "nb38~r2"
            eventually_sync(lambda: r.exists("arq:result:nb38~r2", "arq:result:nb39~r2"), lambda n: n == 2,
                            timeout=30, what="the second retries run")
            _shows(dash, "40/40 done", timeout=30)
            dash.screenshot(path=str(ARTIFACTS / "dashboard.png"))

            # Abort queued on a big batch: the queued jobs never run
            _run_new_cell(page, 'slow = await client.enqueue_many("sleep", [{"seconds": 0.2}] * 2000, '
                                'job_id="slow{index}", batch="browser-slow")\n'
                                "mediaq.dashboard(client, slow, interval=0.5, local_worker=dash.local_worker)")
            slow = page.locator(".mediaq-dashboard").nth(1)
            slow.wait_for(timeout=30_000)
            _shows(slow, "/2000 done", timeout=30)
            slow.locator(".jupyter-button", has_text="Abort queued").click()
            _shows(slow, "to abort", timeout=30)
            counts = eventually_sync(lambda: sync.batch("browser-slow").status(),
                                     lambda c: c["queued"] + c["in_progress"] == 0, timeout=60,
                                     what="the aborted batch settled")
            assert counts["complete"] < 200 and counts["aborted"] > 1800, counts
            worker_pids = _worker_pids(redis_server.url, settings.queue_db)
        finally:
            browser.close()
            sync.close()

    # restarting the kernel stops the worker it started
    (session,) = lab.api("/api/sessions")  # type: ignore[misc]
    lab.api(f"/api/kernels/{session['kernel']['id']}/restart", method="POST")
    stuck = [pid for pid in worker_pids if not _gone(pid, timeout=30)]
    for pid in stuck:
        os.kill(pid, signal.SIGKILL)
    assert not stuck, f"the notebook's worker {stuck} outlived its kernel's restart"
    r.close()


def _retries(r, batch: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(f"mediaq:batch:{batch}:retries").items()}


def _shows(locator, needle: str, timeout: float) -> str:
    """Wait until the element's text contains ``needle``; returns the text."""
    return eventually_sync(locator.inner_text, lambda text: needle in text, timeout=timeout, interval=0.25,
                           what=f"the dashboard showing {needle!r}")


@contextlib.contextmanager
def dashboard_server(settings, tmp_path: Path, *, batch: str | None = None) -> Iterator[tuple[str, str]]:
    """``mediaq dashboard`` as a person starts it (the command line, loopback, a token); yields
    (base URL, token) once it answers, with its pre-heated kernel up."""
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIAQ_", "JUPYTER"))}
    env.update(settings.replace(worker_processes=1).to_env())
    for name, folder in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                         ("JUPYTER_DATA_DIR", "data"), ("IPYTHONDIR", "ipython")):
        env[name] = str(tmp_path / folder)
    cmd = [sys.executable, "-m", "mediaq.faces.cli", "dashboard", f"--port={port}", f"--token={token}",
           "--interval=0.5"] + ([f"--batch={batch}"] if batch else [])
    log = tmp_path / "voila.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        text = log.read_text(errors="replace")
        assert proc.poll() is None, f"mediaq dashboard exited:\n{text[-3000:]}"
        return "Kernel pool of webview.ipynb is filled" in text

    try:
        eventually_sync(ready, timeout=90, interval=0.2, what="the dashboard server and its pre-heated kernel")
        # the token is required: without it the page sends a person to the login form
        with urllib.request.urlopen(f"{base}/", timeout=10) as refused:
            assert "/login" in refused.geturl() and b"mediaq" not in refused.read()
        yield base, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server shuts its kernels down
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_dashboard_tab(settings, redis_server, tmp_path) -> None:
    """The browser tab: it loads, shows numbers, updates live, and a click (Start worker) works,
    checked in Redis; a job id search shows the job; a failure group lists its jobs."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: `apt-get install -y chromium` (tests/run.sh does it)"
    ARTIFACTS.mkdir(exist_ok=True)
    sync = _sync_client(settings)
    items = [{"seconds": 0.1}] * 58 + [{"seconds": -1}, {"seconds": "oops"}]
    sync.enqueue_many("sleep", items, job_id="tab{index}", batch="tab-demo")
    assert _worker_pids(redis_server.url, settings.queue_db) == []
    worker_pids: list[int] = []
    try:
        with dashboard_server(settings, tmp_path) as (base, token), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 1400})
                page.goto(f"{base}/?token={token}")
                dash = page.locator(".mediaq-dashboard")
                dash.wait_for(timeout=60_000)
                # numbers, and the loud line: jobs wait and nobody runs them
                _shows(dash, "60 waiting, no live worker: start one", timeout=30)
                assert "whole queue" in dash.inner_text() and "tab-demo" in dash.inner_text()
                dash.locator(".jupyter-button", has_text="Start worker").click()
                _shows(dash, "started worker", timeout=60)
                worker_pids = eventually_sync(lambda: _worker_pids(redis_server.url, settings.queue_db),
                                              lambda p: len(p) == 1, timeout=30, what="the tab's worker in Redis")
                # live: the batch moves without a reload, to the end
                _shows(dash, "60/60 done (100.0%) · 2 failed · finished", timeout=60)
                assert "no live worker" not in dash.inner_text()
                # drill-down: a failure group lists its jobs; a job id shows the job
                dash.locator(".jupyter-button", has_text="ConfigError ×2").click()
                _shows(dash, "2 x sleep ConfigError: 2 job(s)", timeout=30)
                assert "tab58" in dash.inner_text() and "tab59" in dash.inner_text()
                box = dash.locator(".widget-text input")
                box.fill("tab59")
                box.press("Enter")
                _shows(dash, "seconds must be a number", timeout=30)
                _shows(dash, "Traceback", timeout=30)
                dash.screenshot(path=str(ARTIFACTS / "dashboard-tab.png"))
            finally:
                browser.close()
        # the tab's worker stops with the server's kernel
        stuck = [pid for pid in worker_pids if not _gone(pid, timeout=30)]
        for pid in stuck:
            os.kill(pid, signal.SIGKILL)
        assert not stuck, f"the tab's worker {stuck} outlived the dashboard server"
    finally:
        sync.close()
