"""A real Jupyter kernel (jupyter_client + ipykernel, no browser): what a person sees when they interrupt
``batch.wait()``, start a worker twice, or lose the kernel."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import eventually_sync, pid_gone

pytestmark = pytest.mark.timeout(240)


class Kernel:
    def __init__(self, env: dict[str, str]) -> None:
        from jupyter_client.manager import start_new_kernel

        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env)

    def execute(self, code: str, *, interrupt_on: str | None = None, timeout: float = 90) -> tuple[str, list]:
        """Run ``code``; returns (its text output, its error traceback lines). ``interrupt_on``: a message
        type (``"display_data"``: the progress bar is up, so the wait is running) on which to interrupt
        the kernel as the stop button does; pressed again every 20 s while the cell still runs, as a
        person would."""
        import queue
        import time

        msg_id = self.kc.execute(code)
        out: list[str] = []
        error: list[str] = []
        pressed: float | None = None
        deadline = time.monotonic() + timeout
        while True:
            if pressed is not None and time.monotonic() - pressed > 20:
                self.km.interrupt_kernel()
                pressed = time.monotonic()
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                assert time.monotonic() < deadline, f"the cell did not finish within {timeout} s: {out}"
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                out.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                error = content["traceback"]
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out), error
            if interrupt_on == kind and pressed is None:
                self.km.interrupt_kernel()
                pressed = time.monotonic()

    def kill(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)  # SIGKILL: no atexit, no clean shutdown


def test_interrupt_second_worker_and_a_killed_kernel(settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAQ_")}
    env.update(settings.replace(worker_processes=1).to_env())
    kernel = Kernel(env)
    pid = None
    try:
        out, err = kernel.execute("import mediaq\nclient = await mediaq.connect()\n"
                                  "batch = await client.enqueue_many('noop', range(3), batch='nobody')\nprint('ok')")
        assert out == "ok\n" and not err, err
        # no worker: the bar says so; interrupting ends the wait with one line, not a traceback
        out, err = kernel.execute("await batch.wait()", interrupt_on="display_data")
        assert len(err) == 1 and "stopped waiting; batch nobody continues, 0/3 done" in err[0], err
        out, err = kernel.execute("await batch.wait(timeout=1, progress=False)")
        assert "no worker is alive: the jobs wait in Redis until one starts" in "".join(err), err
        # a second start_worker() returns the running one
        out, err = kernel.execute("w = mediaq.start_worker(client.settings)\n"
                                  "print(w.pid, mediaq.start_worker(client.settings) is w)")
        assert not err, err
        pid_text, same = out.split()
        pid = int(pid_text)
        assert same == "True"
        out, err = kernel.execute("print(await batch.wait(progress=False, timeout=60))")
        assert "'complete': 3" in out, (out, err)
    finally:
        kernel.kill()
    # the worker the kernel started stops when the kernel dies, even by SIGKILL
    if pid is not None:
        try:
            eventually_sync(lambda: pid_gone(pid) or _reap(pid), timeout=30, interval=0.1,
                            what="the kernel's worker to stop")
        finally:
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return pid_gone(pid)


def test_ctrl_c_in_a_script_ends_the_wait_with_one_line(settings, tmp_path):
    """A script blocked in ``batch.wait()`` (the sync twin) gets Ctrl-C: it ends with mediaq's one line
    saying the batch goes on, not a raw KeyboardInterrupt out of mediaq's loop thread."""
    import subprocess
    import sys

    script = tmp_path / "wait.py"
    script.write_text("import mediaq\n"
                      "client = mediaq.connect_sync()\n"
                      "batch = client.enqueue_many('noop', range(3), batch='script')\n"
                      "batch.wait()\n")  # its bar on stderr says the wait is running
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAQ_")}
    env.update(settings.to_env())
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        # interrupt once the bar is up: earlier, the script is not waiting yet (a busy machine widens that gap)
        assert proc.stderr.read(1) != ""
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        err = err.replace("\r", "\n")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert err.strip().splitlines()[-1] == ("mediaq.errors.WaitInterrupted: stopped waiting; batch script continues, "
                                            "0/3 done"), err
    assert "concurrent/futures" not in err and "threading.py" not in err, err  # nothing from mediaq's loop thread
