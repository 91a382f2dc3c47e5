"""Fault suite, item 9: what an agent leaves in its workspace cannot take the host's files or the worker's memory.

The real opencode (scripted by the local model) makes, in one run: a symlink to /etc/passwd,
a symlinked folder, a FIFO, a file over `resources.max_file_mb` and one ordinary file. Only the
ordinary file is uploaded; each of the others is named in the thread with why, and nothing
of /etc/passwd reaches the thread, the database or the run's diff. (A `..` path, which git
never reports, is refused by `read_regular_file` itself: tests/workers/test_workspace.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot.db.repositories import Resources, Runs
from bot.types import RunState
from tests.fakes.openai_server import Turn
from tests.support.engines import EngineBuilder
from tests.workers.agent_support import agent_settings, ask, requires_opencode
from workers.workspace import UnsafeFile, read_regular_file

pytestmark = requires_opencode

MAKE_TROUBLE = ("ln -s /etc/passwd passwd-link && ln -s /etc etc-dir && mkfifo pipe"
                " && head -c 2200000 /dev/zero | tr '\\0' 'x' > huge.log && echo fine > ok.txt")


def test_symlinks_fifos_and_huge_files_are_refused_with_a_notice(tmp_path: Path, model,
                                                                 make_engine: EngineBuilder) -> None:
    model.script(Turn.bash(MAKE_TROUBLE), Turn.text("Made the files."))
    settings = agent_settings(tmp_path, model)
    manifest = Path(settings.manifest_path)
    data = yaml.safe_load(manifest.read_text())
    data["resources"]["max_file_mb"] = 2
    manifest.write_text(yaml.safe_dump(data))
    engine, view = make_engine(settings)
    ask(engine, "/agent make some files")
    assert engine.queue.wait(timeout=120)

    with engine.db.reading() as session:
        assert Runs(session).get(1).state == RunState.DONE
        stored = {resource.path for resource in Resources(session).in_conversation(1)}
    assert "ok.txt" in stored and not stored & {"passwd-link", "etc-dir", "pipe", "huge.log"}
    assert [f.filename for f in view.files if f.filename not in ("run-1.diff",)] == ["ok.txt"]
    notice = next(text for m in view.order for text in view.texts(m) if "were not uploaded" in text)
    assert "`passwd-link`: a symlink" in notice and "`etc-dir`: a symlink" in notice
    assert "`huge.log`: too large (2.1 MiB; the limit is 2 MiB)" in notice
    passwd_line = Path("/etc/passwd").read_text().splitlines()[0]
    everything = [text for m in view.order for text in view.texts(m)] + [f.data.decode(errors="replace")
                                                                         for f in view.files]
    assert not [text for text in everything if passwd_line in text]
    diff = next(f.data.decode() for f in view.files if f.filename == "run-1.diff")
    assert "Binary files" in diff and "xxxxxxxx" not in diff  # the huge file's text is not in the diff


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "a/../../b"])
def test_a_path_leaving_the_workspace_is_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(UnsafeFile, match="outside the workspace"):
        read_regular_file(tmp_path, path)
