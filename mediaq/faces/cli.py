"""The ``mediaq`` command: demo, worker, redis, status, doctor, dashboard, logs. Only argument parsing lives here."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import click

from mediaq.errors import MediaqError
from mediaq.runtime.server import EmbeddedServer
from mediaq.runtime.settings import Settings


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


@click.group()
@click.option("--redis-url", envvar="MEDIAQ_REDIS_URL", default=None,
              help="Redis URL (default: the embedded server in the state folder).")
@click.option("--state-dir", envvar="MEDIAQ_STATE_DIR", default=None, type=click.Path(file_okay=False),
              help="State folder of the embedded server and worker logs.")
@click.version_option(package_name="mediaq")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, state_dir: str | None) -> None:
    """mediaq: bulk media jobs on the arq queue. `mediaq demo` shows it working end to end."""
    overrides: dict[str, object] = {}
    if redis_url:
        overrides["redis_url"] = redis_url
    if state_dir:
        overrides["state_dir"] = state_dir
    ctx.obj = {"settings": Settings.load(**overrides)}


@cli.command()
@click.option("--data", "data_dir", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Folder of sample images (and ratings.csv).")
@click.option("--storage", default=None, help="Where outputs go (default: MEDIAQ_STORAGE or ./media).")
@click.pass_context
def demo(ctx: click.Context, data_dir: str, storage: str | None) -> None:
    """Bulk-run every job over the sample data through Redis and a real worker; print the results."""
    from mediaq.faces.demo import run_demo

    settings = _settings(ctx)
    if storage:
        settings = settings.replace(storage=storage)
    sys.exit(asyncio.run(run_demo(settings, Path(data_dir))))


@cli.command()
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.pass_context
def worker(ctx: click.Context, burst: bool) -> None:
    """Run a worker in the foreground (same as `arq mediaq.worker.WorkerSettings`)."""
    env = {**os.environ, **_settings(ctx).to_env()}
    args = [sys.executable, "-m", "arq", "mediaq.worker.WorkerSettings"] + (["--burst"] if burst else [])
    os.execve(sys.executable, args, env)


@cli.group()
def redis() -> None:
    """The embedded Redis server: start, stop, status, url."""


def _server(ctx: click.Context, bind: str | None = None) -> EmbeddedServer:
    s = _settings(ctx)
    return EmbeddedServer(s.state_dir, s.redis_server, bind or s.redis_bind)


@redis.command("start")
@click.option("--bind", metavar="ADDRESS", default=None,
              help="Also listen on this address of this machine, for workers on a trusted LAN (with the "
                   "password; NOT encrypted). Setting: MEDIAQ_REDIS_BIND.")
@click.pass_context
def redis_start(ctx: click.Context, bind: str | None) -> None:
    """Start the embedded server (or reuse the running one)."""
    server = _server(ctx, bind)
    server.ensure_running()
    st = server.status()
    click.echo(f"embedded Redis running: {st['url']} (pid {st['pid']}, data in {st['folder']})")
    others = server.url_for_others()
    if others:
        click.echo(f"other machines: MEDIAQ_REDIS_URL={others}")
        click.secho(f"WARNING: Redis now listens on {st['bind']}:{st['port']} WITHOUT encryption (the embedded "
                    "server has no TLS): anyone on that network can read the jobs, their results and the "
                    "password. Use it on a trusted LAN only; elsewhere run a Redis with TLS "
                    "(README, 'Workers on many machines').", err=True, fg="red", bold=True)


@redis.command("stop")
@click.pass_context
def redis_stop(ctx: click.Context) -> None:
    """Stop the embedded server (its data stays in the state folder)."""
    click.echo("stopped" if _server(ctx).stop() else "was not running")


@redis.command("status")
@click.pass_context
def redis_status(ctx: click.Context) -> None:
    """Show whether the embedded server runs, where, and its folder."""
    click.echo(json.dumps(_server(ctx).status(), indent=2))


@redis.command("url")
@click.option("--show-password", is_flag=True, help="Print the password too (for MEDIAQ_REDIS_URL elsewhere).")
@click.pass_context
def redis_url(ctx: click.Context, show_password: bool) -> None:
    """Print the server's URL (set it as MEDIAQ_REDIS_URL on other machines' workers)."""
    from mediaq.runtime.server import resolve_redis_url
    from mediaq.runtime.settings import redact_url

    url = resolve_redis_url(_settings(ctx))
    click.echo(url if show_password else redact_url(url))


@cli.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Queue counts by state, live workers and recent batches."""
    from mediaq.faces.console import print_status

    asyncio.run(print_status(_settings(ctx)))


@cli.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Walk the troubleshooting list: Redis, workers, waiting and retrying jobs; say what to do."""
    from mediaq.faces.console import run_doctor

    sys.exit(asyncio.run(run_doctor(_settings(ctx))))


@cli.command()
@click.option("--port", default=8866, show_default=True, help="Port on 127.0.0.1.")
@click.option("--token", default=None, help="The page's token (default: a new random one, printed).")
@click.option("--batch", default=None, help="Follow one batch (default: the whole queue and its newest batches).")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@click.pass_context
def dashboard(ctx: click.Context, port: int, token: str | None, batch: str | None, interval: float) -> None:
    """The live queue view in a browser tab (Voilà, loopback only, with a token)."""
    from mediaq.faces.webview import serve

    sys.exit(serve(_settings(ctx), port=port, token=token, batch=batch, interval=interval))


@cli.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (like `tail -f`).")
@click.option("--worker", "pid", type=int, default=None, help="Only this worker's log (its pid).")
@click.option("--lines", "-n", default=20, show_default=True, help="Lines of each log to start with.")
@click.pass_context
def logs(ctx: click.Context, follow: bool, pid: int | None, lines: int) -> None:
    """The local workers' logs (like `docker-compose logs arq-worker --follow`)."""
    from mediaq.faces.logs import print_logs

    sys.exit(print_logs(_settings(ctx), follow=follow, pid=pid, lines=lines))


def main() -> None:
    try:
        cli(standalone_mode=True)
    except MediaqError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
