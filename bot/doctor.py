"""`python -m bot doctor`: checks the manifest, environment, database, queue and workers;
each plugin adds its own lines (the agent: its binary and its model) through `check_health`."""

from __future__ import annotations

from bot.config import Manifest, Settings, load_manifest
from bot.db import Database, safe_url
from bot.errors import ConfigError, DatabaseUnavailable
from bot.plugins import make_plugin_manager
from bot.types import HealthCheck


def run_checks(settings: Settings, *, offline: bool = False) -> list[HealthCheck]:
    """Return the result of every check, in order; a broken manifest skips the rest."""
    try:
        manifest = load_manifest(settings.manifest_path)
    except ConfigError as exc:
        return [HealthCheck("manifest", False, problem, "fix the key named here") for problem in str(exc).splitlines()]
    where = settings.manifest_path or "built-in defaults"
    checks = [HealthCheck("manifest", True, f"{where} is valid ({manifest.name})")]
    checks += _platform_checks(manifest, settings)
    checks.append(_database_check(settings))
    checks.append(_memory_search_check())
    checks += _queue_checks(settings)
    pm = make_plugin_manager(manifest, load_entrypoints=not settings.get("BOT_DISABLE_ENTRYPOINTS"))
    for plugin_checks in reversed(pm.hook.check_health(manifest=manifest, settings=settings, offline=offline)):
        checks += plugin_checks or []
    return checks


def _platform_checks(manifest: Manifest, settings: Settings) -> list[HealthCheck]:
    """Return one credentials line per platform `run` would start (from the registry), then the LLM's."""
    from bot import platforms

    checks = [platform.credential_check(platforms.section(manifest, platform.name), settings)
              for platform in platforms.enabled(manifest)]
    has_key = bool(settings.get("ANTHROPIC_API_KEY"))
    checks.append(HealthCheck("llm", True if has_key else None,
                        "ANTHROPIC_API_KEY present" if has_key else "no ANTHROPIC_API_KEY: direct answers are off",
                        "" if has_key else "export ANTHROPIC_API_KEY (ANTHROPIC_BASE_URL for a proxy)"))
    return checks


def _database_check(settings: Settings) -> HealthCheck:
    try:
        db = Database(settings.database_url)
        revision = db.migrate()
        db.close()
    except DatabaseUnavailable as exc:
        return HealthCheck("database", False, str(exc), "check DATABASE_URL, or unset it to use SQLite in BOT_DATA_DIR")
    return HealthCheck("database", True, f"{safe_url(settings.database_url)} at schema {revision}")


def _memory_search_check() -> HealthCheck:
    """Return whether memory search is semantic as well as full-text (the `embeddings` extra), loading nothing."""
    from bot import embeddings

    on, detail = embeddings.status()
    if on or not embeddings.switched_on():  # on, or switched off on purpose
        return HealthCheck("memory", True, detail)
    return HealthCheck("memory", None, detail, "pip install -e '.[embeddings]' to find memories by meaning too")


def _queue_checks(settings: Settings) -> list[HealthCheck]:
    if not settings.redis_url:
        return [HealthCheck("queue", True, "in-process queue (set REDIS_URL to use RQ workers)")]
    from bot.errors import QueueUnavailable
    from bot.queue import RedisQueue

    try:
        queue = RedisQueue(settings.redis_url)
    except QueueUnavailable:
        return [HealthCheck("queue", False, "cannot reach Redis at REDIS_URL", "start redis-server or fix REDIS_URL")]
    try:
        workers = queue.listening_workers()
    finally:
        queue.close()
    reached = HealthCheck("queue", True, f"Redis reachable at {safe_url(settings.redis_url)}")
    if not workers:
        return [reached, HealthCheck("workers", False, "no worker is listening: messages will wait in the queue",
                               "start `python -m bot worker` (one or more)")]
    return [reached, HealthCheck("workers", True, f"{workers} worker{'s' if workers > 1 else ''} listening")]
