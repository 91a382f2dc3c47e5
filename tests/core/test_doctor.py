"""`python -m bot doctor` asks every plugin for its checks, third-party ones included."""

from __future__ import annotations

import os
from pathlib import Path

from bot import embeddings
from tests.support.engines import REPO, run_bot

PLUGIN = '''
from bot.hookspecs import hookimpl
from bot.types import HealthCheck


@hookimpl
def check_health(manifest, settings, offline):
    reached = "skipped" if offline else "reached"
    return [HealthCheck("ticketing", False, f"ticket tracker not {reached}", "export TICKETS_TOKEN")]
'''


def test_a_plugins_health_check_is_a_doctor_line_and_fails_the_doctor(tmp_path: Path) -> None:
    (tmp_path / "ticket_plugin.py").write_text(PLUGIN)
    manifest = tmp_path / "manifest.yml"
    manifest.write_text((REPO / "manifest.yml").read_text().replace("  modules: []", "  modules: [ticket_plugin]", 1))
    result = run_bot(["doctor", "--offline"], tmp_path, BOT_MANIFEST=str(manifest),
                     PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
    assert "FAIL ticketing ticket tracker not skipped" in result.stdout
    assert "fix: export TICKETS_TOKEN" in result.stdout
    assert result.stderr.strip().splitlines() == ["error: 1 check failed: ticketing"] and result.returncode == 2


def test_the_doctor_says_whether_memory_search_is_semantic(tmp_path: Path) -> None:
    switched_off = run_bot(["doctor", "--offline"], tmp_path, BOT_SEMANTIC_SEARCH="off")
    assert "ok   memory    semantic search off (BOT_SEMANTIC_SEARCH=off): full-text only" in switched_off.stdout
    default = run_bot(["doctor", "--offline"], tmp_path)
    if embeddings.installed():
        assert "ok   memory    semantic search on: local model wordllama/l2_supercat_256" in default.stdout
    else:
        assert "warn memory    semantic search off (the `embeddings` extra is not installed)" in default.stdout
