"""Progress bars redraw freely in a terminal and rarely in a log (pure logic, plus one real batch)."""

from __future__ import annotations

import io

from mediaq.faces.progress import LOG_INTERVAL, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_every_log_interval(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    bar = progress_bar(total=5, desc="x")
    assert bar.mininterval == LOG_INTERVAL
    bar.close()


def test_a_terminal_keeps_tqdms_default(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Terminal())
    bar = progress_bar(total=5, desc="x")
    assert bar.mininterval < 1
    bar.close()


def test_options_win(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    bar = progress_bar(total=5, mininterval=0.5)
    assert bar.mininterval == 0.5
    bar.close()


async def test_wait_draws_done_over_total(client, start_worker, capsys):
    start_worker()
    batch = await client.enqueue_many("sleep", [{"seconds": 0.6}] * 2 + [{"seconds": 0}] * 28,
                                      batch="bar")
    await batch.wait(progress=True, timeout=60, poll_interval=0.05)  # about 12 polls or more
    err = capsys.readouterr().err
    assert "bar: 100%" in err and "30/30" in err
    assert err.count("\r") <= 3, err  # a log gets the first and the last draw, not one per poll
