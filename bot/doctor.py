"""`python -m bot doctor`: checks the manifest, environment, database, Redis and agent binary."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from bot.config import Manifest, Settings, load_manifest, missing_credentials, resolve_agent_binary
from bot.db import Database, safe_url
from bot.errors import ConfigError, DatabaseUnavailable

#: Seconds the agent binary gets to print its version.
VERSION_TIMEOUT_S = 20


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool | None  # None: a warning, not a failure
    detail: str
    fix: str = ""


def run_checks(settings: Settings) -> list[Check]:
    """Return the result of every check, in order; a broken manifest skips the rest."""
    try:
        manifest = load_manifest(settings.manifest_path)
    except ConfigError as exc:
        return [Check("manifest", False, str(exc), "fix the key named above")]
    where = settings.manifest_path or "built-in defaults"
    checks = [Check("manifest", True, f"{where} is valid ({manifest.name})")]
    checks += _platform_checks(manifest, settings)
    checks.append(_database_check(settings))
    checks.append(_redis_check(settings))
    checks.append(_agent_check(manifest, settings))
    return checks


def _platform_checks(manifest: Manifest, settings: Settings) -> list[Check]:
    checks = []
    platforms = manifest.platforms
    if platforms.slack.enabled:
        missing = missing_credentials("slack", manifest, settings)
        checks.append(Check("slack", None if missing else True,
                            f"missing {', '.join(missing)}" if missing else f"credentials present ({platforms.slack.mode} mode)",
                            "create the app from `python -m bot manifest slack` and export the tokens" if missing else ""))
    if platforms.discord.enabled:
        present = not missing_credentials("discord", manifest, settings)
        checks.append(Check("discord", True if present else None,
                            "DISCORD_TOKEN present" if present else "missing DISCORD_TOKEN",
                            "" if present else "create a Discord application and export DISCORD_TOKEN"))
    has_key = bool(settings.get("ANTHROPIC_API_KEY"))
    checks.append(Check("llm", True if has_key else None,
                        "ANTHROPIC_API_KEY present" if has_key else "no ANTHROPIC_API_KEY: direct answers are off",
                        "" if has_key else "export ANTHROPIC_API_KEY (ANTHROPIC_BASE_URL for a proxy)"))
    return checks


def _database_check(settings: Settings) -> Check:
    try:
        db = Database(settings.database_url)
        revision = db.migrate()
        db.close()
    except DatabaseUnavailable as exc:
        return Check("database", False, str(exc), "check DATABASE_URL, or unset it to use SQLite in BOT_DATA_DIR")
    return Check("database", True, f"{safe_url(settings.database_url)} at schema {revision}")


def _redis_check(settings: Settings) -> Check:
    if not settings.redis_url:
        return Check("queue", True, "in-process queue (set REDIS_URL to use RQ workers)")
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
    except RedisError as exc:
        return Check("queue", False, f"cannot reach Redis: {type(exc).__name__}", "start redis-server or fix REDIS_URL")
    return Check("queue", True, f"Redis reachable at {safe_url(settings.redis_url)}")


def _agent_check(manifest: Manifest, settings: Settings) -> Check:
    binary = resolve_agent_binary(manifest, settings)
    if binary is None:
        return Check("agent", False, "the opencode binary was not found",
                     "run `npm install` in the checkout (pins opencode-ai), or set OPENCODE_BIN")
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                timeout=VERSION_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("agent", False, f"{binary} does not run: {type(exc).__name__}", "reinstall with `npm install`")
    version = (result.stdout or result.stderr).strip().splitlines()[:1]
    return Check("agent", result.returncode == 0, f"{binary} {version[0] if version else ''}".strip())
