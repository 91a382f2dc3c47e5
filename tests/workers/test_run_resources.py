"""A run's artifacts with the real opencode: stored, redacted, uploaded, found again after a restart."""

from __future__ import annotations

from pathlib import Path

from bot.db.repositories import Resources
from tests.fakes.openai_server import Turn
from tests.support.engines import EngineBuilder
from tests.workers.agent_support import agent_settings, ask, requires_opencode

pytestmark = requires_opencode

TOKEN = "xoxb-7770001111-2223334444-QwErTyUiOpAsDfGhJkLzXcVb"
REPORT = "# Quarterly report\n\nThe retry backoff is now exponential with jitter.\n"


def test_a_runs_files_diff_and_refusals_reach_the_thread_and_sql_and_survive_a_restart(
        tmp_path: Path, model, database_url: str, make_engine: EngineBuilder) -> None:
    model.script(
        Turn.write("docs/report.md", REPORT),
        Turn.write("config/slack.env", f"SLACK_BOT_TOKEN={TOKEN}\n"),
        Turn.bash("ln -s /etc/passwd passwd-link"),
        Turn.text("Wrote the report and the config."),
    )
    settings = agent_settings(tmp_path, model, DATABASE_URL=database_url)
    engine, view = make_engine(settings)
    ask(engine, "/agent write the quarterly report")
    engine.queue.wait(timeout=120)

    uploaded = {f.filename: f.data for f in view.files}
    assert uploaded["report.md"] == REPORT.encode()
    assert uploaded["slack.env"] == b"SLACK_BOT_TOKEN=[redacted]\n"  # redacted in the upload
    assert "passwd-link" not in uploaded and all(Path("/etc/passwd").read_bytes() not in d for d in uploaded.values())
    diff = uploaded["run-1.diff"].decode()
    assert "+The retry backoff is now exponential with jitter." in diff and TOKEN not in diff
    posted = [view.last(m) for m in view.order]
    assert any("`passwd-link`: a symlink, not uploaded" in text for text in posted)
    with engine.db.reading() as session:
        resources = Resources(session, settings.data_dir / "blobs")
        stored = {r.path: r for r in resources.in_conversation(1)}
        assert set(stored) == {"docs/report.md", "config/slack.env", "run-1.diff"}
        assert stored["run-1.diff"].kind == "diff" and stored["docs/report.md"].kind == "file"
        assert stored["docs/report.md"].run_id == 1 and stored["docs/report.md"].requested_by == "ana"
        assert stored["docs/report.md"].platform_file_id in {"f1", "f2", "f3"}
        assert resources.content(stored["config/slack.env"]) == b"SLACK_BOT_TOKEN=[redacted]\n"  # and stored so
    engine.close()

    restarted, thread = make_engine(settings)  # a new process, the same database and data dir
    ask(restarted, "/find exponential jitter")
    found = thread.last(thread.order[-1])
    assert "docs/report.md" in found and "exponential" in found
    ask(restarted, "/show docs/report.md")
    shown = thread.last(thread.order[-1])
    assert "```markdown\n# Quarterly report" in shown and "run 1" in shown
    ask(restarted, "/show r999")
    assert thread.last(thread.order[-1]) == "No file `r999` in this channel. `/files all` lists them."
    ask(restarted, "/find")
    assert thread.last(thread.order[-1]).startswith("Usage: `/find <words>`")


def test_past_max_uploads_the_rest_go_up_as_one_zip_and_stay_resources(tmp_path: Path, model,
                                                                        make_engine: EngineBuilder) -> None:
    import io
    import zipfile

    model.script(Turn.bash("for n in 1 2 3 4; do echo file $n > f$n.txt; done"), Turn.text("four files"))
    settings = agent_settings(tmp_path, model, manifest_extra="")
    manifest = Path(settings.manifest_path)
    manifest.write_text(manifest.read_text().replace("max_uploads: 20", "max_uploads: 2"))
    engine, view = make_engine(settings)
    ask(engine, "/agent make four files")
    engine.queue.wait(timeout=120)
    names = [f.filename for f in view.files]
    assert names == ["f1.txt", "f2.txt", "run-1-more-files.zip", "run-1.diff"]
    with zipfile.ZipFile(io.BytesIO(view.files[2].data)) as archive:
        assert {name: archive.read(name) for name in archive.namelist()} == {"f3.txt": b"file 3\n", "f4.txt": b"file 4\n"}
    with engine.db.reading() as session:
        assert sorted(r.path for r in Resources(session).in_conversation(1)) == [
            "f1.txt", "f2.txt", "f3.txt", "f4.txt", "run-1.diff"]
    assert "2 file(s) attached." not in view.last(view.order[0]) and "3 file(s) attached." in view.last(view.order[0])
