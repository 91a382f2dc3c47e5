"""The README a newcomer follows: its commands are the ones that work, in the order they work."""

from __future__ import annotations

import re

from tests.support.engines import REPO

README = (REPO / "README.md").read_text()


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.S)


def test_the_first_two_commands_set_up_and_run_the_bot_then_the_tests() -> None:
    first, second = (block.strip() for block in shell_blocks()[:2])
    assert first.endswith(".venv/bin/python -m bot chat") and "pip install -q -e ." in first
    assert second.endswith(".venv/bin/python -m pytest -q")
    ci = (REPO / ".ci" / "run").read_text()
    assert second in ci, ".ci/run must run the README's test command"


def test_bare_python_commands_come_after_the_venv_is_activated() -> None:
    activate = README.index(". .venv/bin/activate")
    bare = [m.start() for m in re.finditer(r"(?<![/\w])python -m bot ", README)]
    assert bare and min(bare) > activate


def test_the_license_is_apache_2_and_declared() -> None:
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()
