"""The command line: `python -m bot chat|run|worker|web|migrate|doctor|status|route|manifest`."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from bot import platforms
from bot.config import Settings, load_manifest
from bot.errors import UserFacingError
from bot.logs import setup_logging
from bot.queue import resolve
from bot.redaction import Redactor

log = logging.getLogger("bot.cli")

#: Like the built-in plugins, everything the commands start outside bot/ is named by dotted path
#: and loaded when used: the core imports no adapter, plugin or worker module
#: (tests/core/test_architecture.py keeps it so). Platforms (`run`, `manifest`) come from the
#: registry, `bot.platforms`.
CONSOLE_CHAT = "adapters.console.ConsoleChat"
RUN_WORKER = "workers.worker.run_worker"
REAPER = "workers.reaper.Reaper"
START_AGENTS = "workers.worker.start_agents"
STOP_AGENTS = "workers.worker.stop_agents"
ROUTE_LINES = "workers.routing.route_lines"
#: The web view (`python -m bot web`, or a thread of `run`/`chat` with web.enabled): Starlette
#: and uvicorn are imported only here.
WEB_SERVE = "adapters.web.serve"


def _clean_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one line on stderr and exit 2; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserFacingError as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                click.echo(f"error: {line}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


def _settings() -> Settings:
    settings = Settings.from_env()
    setup_logging(Redactor(settings.secret_values))
    return settings


@click.group()
@click.version_option(package_name="threadwork")
def main() -> None:
    """Threadwork: a team's coding agent, in the chat thread."""


@main.command()
@click.option("--thread", default=None, help="Thread to continue (default: 'main').")
@click.option("--new", "new_thread", is_flag=True, help="Start a new thread.")
@click.option("--concurrent", is_flag=True,
              help="Piped: send each line at once and print every edit, instead of one line after another.")
@_clean_errors
def chat(thread: str | None, new_thread: bool, concurrent: bool) -> None:
    """Chat with the bot in this terminal (console adapter)."""
    from datetime import datetime

    from bot import constants
    from bot.engine import Engine, set_current

    settings = _settings()
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if interactive:  # keep log lines from tearing the prompt
        setup_logging(Redactor(settings.secret_values), log_file=settings.data_dir / "logs" / "chat.log")
    engine = Engine.from_settings(settings)
    set_current(engine)
    if new_thread:
        thread = datetime.now().strftime("t%Y%m%d-%H%M%S")
    console = resolve(CONSOLE_CHAT)(engine, thread or constants.CONSOLE_DEFAULT_THREAD, interactive=interactive,
                                    concurrent=concurrent)
    reaper = _in_process_reaper(engine)
    agents = _in_process_agents(engine)
    _web_in_thread(engine)
    try:
        code = console.run(None)
    finally:
        if reaper:
            reaper.stop()
        if agents:
            resolve(STOP_AGENTS)(engine)
        engine.close()
    sys.exit(code)


@main.command()
@_clean_errors
def run() -> None:
    """Start every platform adapter the manifest enables and has credentials for."""
    from bot.engine import Engine, set_current

    settings = _settings()
    manifest = load_manifest(settings.manifest_path)
    setup_logging(Redactor(settings.secret_values))  # now with the secrets of the platforms plugins add
    enabled = [platform.name for platform in platforms.enabled(manifest)]
    lacking = {p: platforms.missing_credentials(manifest, p, settings) for p in enabled}
    ready = [p for p in enabled if not lacking[p]]
    if not ready:
        problems = [f"{platform}: set {', '.join(lacking[platform])}" for platform in enabled]
        raise UserFacingError("\n".join([
            "no platform adapter can start: none is enabled with its credentials",
            *problems,
            "see the README (Slack, Discord); for a local chat with no tokens: python -m bot chat",
        ]))
    for platform in enabled:
        if lacking[platform]:
            click.echo(f"{platform}: not started (set {', '.join(lacking[platform])})", err=True)
    _metrics_endpoint(settings, "run")
    engine = Engine.from_settings(settings)
    set_current(engine)
    if engine.listening_workers() == 0:
        click.echo("queue: no worker is running, so answers and agent runs will wait: start `python -m bot worker`",
                   err=True)
    reaper = _in_process_reaper(engine)
    agents = _in_process_agents(engine)
    _web_in_thread(engine)
    try:
        registry = platforms.registered(engine.manifest)
        _run_adapters(engine, [registry[p].serve for p in ready if registry[p].serve])
    finally:
        if reaper:
            reaper.stop()
        if agents:
            resolve(STOP_AGENTS)(engine)
        engine.close()


def _metrics_endpoint(settings: Settings, role: str, port: int | None = None) -> None:
    """Serve Prometheus metrics from this process when BOT_METRICS_PORT (or `port`) is set; say where."""
    from bot import metrics

    url = metrics.serve(settings, role, port)
    if url:
        click.echo(f"metrics: {url}", err=True)


def _in_process_reaper(engine: Any) -> Any:
    """Start recovery of dead runs here when this process runs the jobs (no Redis workers)."""
    if engine.settings.redis_url:
        return None
    return resolve(REAPER)(engine).start()


def _in_process_agents(engine: Any) -> bool:
    """Start the agents' servers (warm opencode) in the background when this process runs the jobs."""
    if engine.settings.redis_url:
        return False
    resolve(START_AGENTS)(engine)
    return True


def _web_in_thread(engine: Any) -> None:
    """Serve the web view from a thread of this process when the manifest enables it (web.enabled)."""
    import threading

    web = engine.manifest.web
    if not web.enabled:
        return
    threading.Thread(target=resolve(WEB_SERVE), args=(engine,), name="web-view", daemon=True).start()
    click.echo(f"web view: http://{web.host}:{web.port}/ (links need BOT_PUBLIC_URL)", err=True)


def _run_adapters(engine: Any, serves: list[str]) -> None:
    """Run each platform's `serve` (by dotted path) in its own thread; exit 1 once all have returned."""
    import threading

    threads = [threading.Thread(target=platforms.resolve(path), args=(engine,), name=path.rpartition(".")[0],
                                daemon=True) for path in serves]
    for thread in threads:
        thread.start()
        click.echo(f"{thread.name}: started", err=True)
    for thread in threads:
        while thread.is_alive():
            thread.join(1)
    # Adapters serve until stopped: when every one has returned, the bot is not running.
    click.echo("error: every platform adapter has stopped; see the lines above for why", err=True)
    sys.exit(1)


@main.command()
@click.option("--host", default=None, help="Address to listen on (default: web.host, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port to listen on (default: web.port, 8700).")
@_clean_errors
def web(host: str | None, port: int | None) -> None:
    """Serve the web view: a live page per run and each conversation's files, behind signed links."""
    from bot.engine import Engine, set_current

    settings = _settings()
    engine = Engine.from_settings(settings)
    set_current(engine)
    host, port = host or engine.manifest.web.host, port or engine.manifest.web.port
    try:
        resolve(WEB_SERVE)(engine, host=host, port=port,
                           ready=lambda _server: click.echo(f"web view: listening on http://{host}:{port}/", err=True))
    finally:
        engine.close()


@main.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option("--name", default=None, help="Worker name (default: RQ's).")
@click.option("--with-scheduler", is_flag=True, help="Also run RQ's scheduler (retries with intervals).")
@click.option("--metrics-port", default=None, type=click.IntRange(1, 65535),
              help="Serve Prometheus metrics on this port (default: BOT_METRICS_PORT; unset: no endpoint).")
@_clean_errors
def worker(burst: bool, name: str | None, with_scheduler: bool, metrics_port: int | None) -> None:
    """Run an RQ worker that executes the bot's jobs (needs REDIS_URL)."""
    settings = _settings()
    if not settings.redis_url:
        raise UserFacingError("REDIS_URL is not set: workers need Redis (the console bot runs jobs in-process without it)")
    _metrics_endpoint(settings, "worker", metrics_port)
    sys.exit(resolve(RUN_WORKER)(settings, burst=burst, name=name, with_scheduler=with_scheduler,
                                 ready=lambda line: click.echo(line, err=True)))


@main.command()
@_clean_errors
def migrate() -> None:
    """Apply database migrations (they also run at every start)."""
    from bot.db import Database, safe_url

    settings = _settings()
    load_manifest(settings.manifest_path)  # a broken manifest stops here, before the schema changes
    db = Database(settings.database_url)
    revision = db.migrate()
    db.close()
    click.echo(f"{safe_url(settings.database_url)}: schema at revision {revision}")


@main.command()
@_clean_errors
def status() -> None:
    """Print the queue's depth, its workers, runs by state and the oldest running run."""
    from bot import status as operator_view
    from bot.db import Database

    settings = _settings()
    queue = operator_view.queue_state(settings.redis_url)
    db = Database(settings.database_url)
    try:
        db.migrate()
        runs = operator_view.runs_state(db)
    finally:
        db.close()
    for line in operator_view.report(queue, runs):
        click.echo(line)


@main.command()
@click.option("--offline", is_flag=True, help="Skip the checks that call a model over the network.")
@_clean_errors
def doctor(offline: bool) -> None:
    """Check the manifest, environment, database, queue, workers, the agent and its model."""
    from bot.doctor import run_checks

    checks = run_checks(_settings(), offline=offline)
    marks = {True: "ok  ", False: "FAIL", None: "warn"}
    for check in checks:
        click.echo(f"{marks[check.ok]} {check.name:<9} {check.detail}")
        if check.fix and check.ok is not True:
            click.echo(f"     {'':<9} fix: {check.fix}")
    failed = [check.name for check in checks if check.ok is False]
    if failed:
        raise UserFacingError(f"{len(failed)} check{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)}")


@main.command()
@_clean_errors
def route() -> None:
    """Read messages, one per line, and print how each is routed, as JSON lines."""
    for result in resolve(ROUTE_LINES)(_settings(), (line.rstrip("\n") for line in sys.stdin)):
        click.echo(json.dumps(result, ensure_ascii=False))


@main.command()
@click.argument("platform")
@_clean_errors
def manifest(platform: str) -> None:
    """Print the platform's app manifest (Slack) or invite URL (Discord) from manifest.yml."""
    settings = _settings()
    loaded = load_manifest(settings.manifest_path)
    printers = {p.name: p.manifest for p in platforms.registered(loaded).values() if p.manifest}
    if platform not in printers:
        raise UserFacingError(f"no platform {platform!r} has a manifest to print; choose one of: "
                              f"{', '.join(sorted(printers))}")
    click.echo(platforms.resolve(printers[platform])(loaded, settings))


if __name__ == "__main__":  # pragma: no cover
    main()
