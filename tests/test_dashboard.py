"""The widget dashboard after a known batch run by a real worker: counts, failures, buttons, refresh task."""

from __future__ import annotations

import asyncio

import pytest
from arq.constants import abort_jobs_ss
from helpers import eventually

import mediaq
from mediaq.faces.widgets import Dashboard
from mediaq.runtime.server import EmbeddedServer

ipywidgets = pytest.importorskip("ipywidgets")


async def test_widget_state_after_a_known_batch(client, start_worker):
    worker = start_worker()
    items = [{"seconds": 0}] * 8 + [{"seconds": -1}, {"seconds": "x"}]
    batch = await client.enqueue_many("sleep", items, job_id="k{index}", batch="known")
    dash = Dashboard(client, batch, local_worker=worker, autostart=False)
    assert not dash.running and dash.snapshot is None
    await batch.wait(progress=False, timeout=60)
    # a snapshot's reads run side by side and can straddle a worker's flush: wait for all it shows
    await eventually(dash.refresh, lambda s: s.batches[0].finished and len(s.failures) == 2
                     and sum(g.count for g in s.errors) == 2 and bool(s.workers))

    bar, label, _ = dash._bars["known"]
    assert bar.value == 1.0 and bar.bar_style == "warning"  # finished, with failures
    assert "10/10 done (100.0%) · 2 failed · finished" in label.value
    counts = dash.counts.value
    assert "batch <code>known</code>" in counts and "0 pending" in counts
    assert "<code>sleep</code></td><td" in dash.functions.value and ">8</td><td" in dash.functions.value
    for job_id in ("k8", "k9"):
        assert f"<code>{job_id}</code>" in dash.failures.value
    assert "ConfigError" in dash.failures.value and "seconds must be a number" in dash.failures.value
    assert f"<td style=\"padding:1px 8px;text-align:right\">{worker.pid}</td>" in dash.workers.value
    assert f"pid {worker.pid} <b>alive</b>" in dash.local_label.value
    assert dash.buttons["start"].disabled and not dash.buttons["stop"].disabled
    assert "<polyline" in dash.chart.value

    # static and text front ends show the same snapshot
    assert "<code>k9</code>" in dash._repr_html_() and "10/10 done" in dash._repr_html_()
    assert "batch known: 10/10 done" in str(dash)
    bundle = dash._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == dash.widget.model_id
    assert bundle["text/html"] == dash._repr_html_() and bundle["text/plain"] == str(dash)
    assert "mediaq-dashboard" in dash.widget._dom_classes

    # failures grouped by error, with counts; a group lists its jobs as a DataFrame
    (group,) = dash.snapshot.errors
    assert (group.function, group.short_type, group.count) == ("sleep", "ConfigError", 2)
    assert "ConfigError" in dash.errors.value and ">2</td>" in dash.errors.value
    (button,) = dash.error_buttons.children
    assert button.description == "ConfigError ×2"
    button.click()
    await eventually(lambda: dash.monitor.detail, what="the group's jobs")
    title, frame = dash.monitor.detail
    assert title == "2 x sleep ConfigError" and sorted(frame["job_id"]) == ["k8", "k9"]
    assert len(dash.detail.outputs) == 2  # a title and the DataFrame
    # a job id: its function, arguments, status, tries, times and traceback
    dash.monitor.detail = None
    dash.job_id.value = "k9"
    await eventually(lambda: dash.monitor.detail, what="the job's details")
    title, info = dash.monitor.detail
    assert title == "job k9" and info["function"] == "sleep" and info["seconds"] == "x"
    assert info["status"] == "failed" and info["tries"] == 1 and "seconds must be a number" in info["traceback"]
    assert len(dash.detail.outputs) == 1  # the job's table
    # a long message never squeezes the buttons
    assert all(b.layout.flex == "0 0 auto" for b in dash.buttons.values())

    # "Retry failed": the two failures get retry jobs, linked in Redis, run by the worker (and fail again)
    dash.buttons["retry"].click()
    await dash.wait_actions()
    assert dash.action_label.value == "retried 2 failed job(s)"
    retries = await client.redis.hgetall("mediaq:batch:known:retries")
    assert {k.decode(): v.decode() for k, v in retries.items()} == {"k8": "k8~r1", "k9": "k9~r1"}
    assert await client.redis.exists("arq:job:k8~r1", "arq:result:k8~r1") >= 1
    await batch.wait(progress=False, timeout=60)
    # a snapshot's reads run side by side: wait for every flushed figure asserted below
    snap = await eventually(dash.refresh, lambda s: {f.job_id for f in s.failures} >= {"k8~r1", "k9~r1"}
                                and s.batches[0].finished and s.failed == 4)
    assert "<code>k9~r1</code>" in dash.failures.value
    # the batch counts each item once (its latest attempt); the whole queue counts every attempt
    assert (snap.batches[0].total, snap.batches[0].failed) == (10, 2) and snap.failed == 4
    assert snap.batches[0].by_function == {"sleep": {"complete": 8, "failed": 2, "aborted": 0}}

    # "Stop worker", then "Start worker" (mediaq.start_worker on the client's settings)
    dash.buttons["stop"].click()
    await dash.wait_actions()
    assert not worker.alive and dash.action_label.value.startswith(f"stopped worker {worker.pid}")
    assert "stopped" in dash.local_label.value and not dash.buttons["start"].disabled
    dash.buttons["start"].click()
    await dash.wait_actions()
    try:
        new = dash.local_worker
        assert new is not worker and new.alive and new.settings == client.settings
        assert dash.action_label.value == f"started worker {new.pid}"
        assert f"pid {new.pid} <b>alive</b>" in dash.local_label.value and dash.buttons["start"].disabled
        await eventually(dash.refresh, lambda s: [w.pid for w in s.workers] == [new.pid])
    finally:
        dash.local_worker.stop()
    await dash.aclose()


async def test_a_click_from_another_thread_and_loop_runs_on_the_clients_loop(client, start_worker):
    """JupyterLab sends widget messages to a kernel subshell: the click arrives on another thread,
    inside another running event loop, while the client's connections belong to the cell's loop."""
    import threading

    start_worker()
    batch = await client.enqueue_many("sleep", [{"seconds": 0}, {"seconds": -1}], job_id="t{index}", batch="threads")
    await batch.wait(progress=False, timeout=60)
    dash = Dashboard(client, batch, autostart=False)
    await dash.refresh()  # the pool now holds idle connections made on this loop
    subshell = asyncio.new_event_loop()
    thread = threading.Thread(target=subshell.run_forever, daemon=True)
    thread.start()

    async def click() -> None:
        dash.buttons["retry"].click()

    try:
        asyncio.run_coroutine_threadsafe(click(), subshell).result(10)
        assert dash.monitor.busy
        await dash.wait_actions()
    finally:
        subshell.call_soon_threadsafe(subshell.stop)
        thread.join(10)
    assert dash.action_label.value == "retried 1 failed job(s)"
    assert await client.redis.hgetall("mediaq:batch:threads:retries") == {b"t1": b"t1~r1"}


async def test_abort_button_marks_pending_jobs(client):
    batch = await client.enqueue_many("noop", range(5), job_id="a{0}", batch="later", defer_by=3600)
    dash = Dashboard(client, batch, autostart=False)
    snap = await dash.refresh()
    assert snap.deferred == 5 and "5 pending" in dash.counts.value
    # no worker: the bar says so, and shows no rate or ETA it cannot know
    assert dash._bars["later"][0].value == 0.0 and dash._bars["later"][1].value == "0/5 done (0.0%) · no live worker"
    dash.buttons["abort"].click()
    assert dash.buttons["abort"].disabled  # no double clicks while it runs
    await dash.wait_actions()
    assert dash.action_label.value == "asked 5 job(s) to abort"
    assert sorted(m.decode() for m in await client.redis.zrange(abort_jobs_ss, 0, -1)) == [f"a{i}" for i in range(5)]
    assert not dash.buttons["abort"].disabled


async def test_pause_button_only_for_bulk_batches_and_it_toggles(client):
    """A live batch hides Pause (and only Pause: the buttons' layouts are their own); a bulk batch
    shows it, and clicks pause and resume the batch in Redis."""
    live = Dashboard(client, await client.enqueue_many("noop", range(3), batch="live-one"), autostart=False)
    await live.refresh()
    assert live.buttons["pause"].layout.display == "none"
    assert all(b.layout.display != "none" for name, b in live.buttons.items() if name != "pause")
    batch = await client.enqueue_many("noop", range(50), batch="bulk-one", priority="bulk")
    dash = Dashboard(client, batch, autostart=False)
    await dash.refresh()
    assert dash.buttons["pause"].layout.display != "none" and dash.buttons["pause"].description == "Pause"
    dash.buttons["pause"].click()
    await dash.wait_actions()
    assert await batch.is_paused() and dash.action_label.value.startswith("paused")
    await dash.refresh()
    assert dash.buttons["pause"].description == "Resume"
    dash.buttons["pause"].click()
    await dash.wait_actions()
    assert not await batch.is_paused()


async def test_whole_queue_dashboard(client):
    for name in ("b1", "b2", "b3", "b4"):
        await client.enqueue_many("noop", range(2), batch=name)
    dash = Dashboard(client, autostart=False)
    assert dash.buttons["retry"].disabled and dash.buttons["abort"].disabled  # they need a batch
    snap = await dash.refresh()
    assert snap.queued == 8 and [b.name for b in snap.batches] == ["b4", "b3", "b2"]
    assert [row.children[0].description for row in dash.progress_box.children] == ["b4", "b3", "b2"]
    await client.enqueue_many("noop", range(2), batch="b5")
    await dash.refresh()
    assert [row.children[0].description for row in dash.progress_box.children] == ["b5", "b4", "b3"]
    assert set(dash._bars) == {"b5", "b4", "b3"}  # the widgets of batches no longer shown are closed
    assert "local worker: none" in dash.local_label.value and dash.buttons["stop"].disabled
    assert "no live workers" in dash.workers.value and "whole queue" in dash.header.value


async def test_the_whole_queue_shows_the_worker_this_process_started(client, settings):
    worker = mediaq.start_worker(settings)
    try:
        dash = Dashboard(client, autostart=False)  # no local_worker given
        await eventually(dash.refresh, lambda s: [w.pid for w in s.workers] == [worker.pid])
        assert f"pid {worker.pid} <b>alive</b>" in dash.local_label.value and not dash.buttons["stop"].disabled
    finally:
        worker.stop()


async def test_one_rate_for_header_and_bar(client, start_worker):
    start_worker()
    batch = await client.enqueue_many("sleep", [{"seconds": 0.05}] * 400, batch="steady")
    dash = Dashboard(client, batch, interval=0.2)
    try:
        label = dash._bars

        def shown():
            bar = label.get("steady")
            return dash.header.value, bar[1].value if bar else ""

        h, b = await eventually(shown, lambda hb: "jobs/s" in hb[1], timeout=60, what="a measured rate")
        # "mediaq · batch .. · queue .. · 12.3 jobs/s · updated ..": the very figure on the bar
        assert h.split(" · ")[3] == b.split(" · ")[1] and b.split(" · ")[1].endswith(" jobs/s"), (h, b)
        await batch.wait(progress=False, timeout=120)
        # idle: zero at once, no slow fade
        await eventually(lambda: dash.monitor.rate(), lambda r: r == 0.0, timeout=20, what="the rate at rest")
    finally:
        await dash.aclose()


def test_rate_window_is_measured_before_it_is_shown():
    from mediaq.client.monitor import RateWindow

    w = RateWindow()
    w.update(0.0, 0)
    assert w.rate() is None and w.eta(100) is None  # nothing measured: no rate, no ETA
    w.update(0.5, 5)
    assert w.rate() is None  # half a second is no measure
    w = RateWindow()
    for t in range(20):  # idle before the batch started is not averaged in
        w.update(float(t), 0)
    for t in range(20, 25):
        w.update(float(t), 10 * (t - 19))
    assert w.rate() == pytest.approx(10.0)
    assert w.eta(50) == pytest.approx(5.0)
    w.update(28.5, 50)  # stopped moving 3.5 s ago: at rest
    assert w.rate() == 0.0


async def test_background_refresh_and_close(client):
    dash = Dashboard(client, interval=0.05)
    assert dash.running
    await eventually(lambda: dash.refreshes >= 3, what="three refreshes")
    assert "every 0.05 s" in dash.header.value
    await client.enqueue_many("noop", range(7))
    await eventually(lambda: dash.snapshot.queued == 7, what="the new jobs")
    dash.close()
    await asyncio.sleep(0.1)
    assert not dash.running and "(stopped)" in dash.header.value
    count = dash.refreshes
    await asyncio.sleep(0.2)
    assert dash.refreshes == count


async def test_running_the_cell_again_replaces_the_dashboard(client):
    first = Dashboard(client, "same", interval=0.05)
    other = Dashboard(client, interval=0.05)  # the whole queue: a different dashboard, kept
    second = Dashboard(client, "same", interval=0.05)
    await asyncio.sleep(0.1)
    assert not first.running and "(stopped)" in first.header.value
    assert second.running and other.running
    await second.aclose()
    await other.aclose()


async def test_redis_outage_shows_and_recovers(settings, tmp_path):
    server = EmbeddedServer(tmp_path / "own-server")
    client = await mediaq.connect(settings=settings.replace(redis_url=server.ensure_running()))
    dash = Dashboard(client, interval=0.1, timeout=1.0)
    try:
        await client.enqueue_many("noop", range(3))
        await eventually(lambda: dash.snapshot is not None and dash.snapshot.queued == 3, what="a first snapshot")
        server.stop()
        await eventually(lambda: dash.error is not None, what="the outage", timeout=20)
        assert dash.error.startswith("Redis unreachable") and dash.running
        assert "Redis unreachable" in dash.status.value and "retrying every 0.1 s" in dash.status.value
        assert "<td style=\"padding:1px 8px;text-align:right\">3</td>" in dash.counts.value  # last good figures
        server.ensure_running()
        await eventually(lambda: dash.error is None and dash.status.value == "", what="the recovery", timeout=30)
        assert dash.running and dash.snapshot.queued == 3
    finally:
        await dash.aclose()
        await client.close()
        server.stop()


async def test_a_failing_refresh_does_not_end_the_task(client, monkeypatch):
    calls = []

    async def broken(*args, **kwargs):
        calls.append(1)
        raise ValueError("bad <data>")

    monkeypatch.setattr("mediaq.client.monitor.queue_snapshot", broken)
    dash = Dashboard(client, interval=0.05)
    await eventually(lambda: len(calls) >= 3, what="three attempts")
    assert dash.running and "refresh failed: ValueError: bad &lt;data&gt;" in dash.status.value
    await dash.aclose()
    assert not dash.running


def test_mediaq_dashboard_and_batch_dashboard_build_dashboards(client):
    import mediaq.faces.widgets

    dash = mediaq.dashboard(client, "x", 2.0, autostart=False)
    assert isinstance(dash, Dashboard) and dash.batch.name == "x" and dash.interval == 2.0
    dash = client.batch("y").dashboard(autostart=False)
    assert isinstance(dash, Dashboard) and dash.batch.name == "y"


def test_outside_a_running_loop(client):
    dash = Dashboard(client, "some-batch")  # a script: built, but refreshed by hand
    assert not dash.running and "(stopped)" not in dash.header.value
    assert "no snapshot yet" in dash._repr_html_() and str(dash) == repr(dash)
    assert repr(dash) == "<mediaq.Dashboard batch='some-batch' interval=1 stopped>"
    dash.buttons["retry"].click()
    assert "no running event loop" in dash.action_label.value
    with pytest.raises(mediaq.ConfigError, match="interval"):
        Dashboard(client, interval=0)
