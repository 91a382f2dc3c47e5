"""Meta-tests: every hook is documented in the README and exercised by a test."""

from __future__ import annotations

import inspect
import re

from bot import hookspecs
from tests.support.engines import REPO

HOOKS = sorted(
    name for name, value in vars(hookspecs).items()
    if inspect.isfunction(value) and hasattr(value, f"{hookspecs.PROJECT}_spec")
)


def test_there_are_hooks() -> None:
    assert {"route_message", "register_commands", "register_agents", "recall", "remember", "startup",
            "report_progress"} <= set(HOOKS)


def test_every_hook_has_a_docstring_that_says_what_to_return_and_each_param() -> None:
    for name in HOOKS:
        function = getattr(hookspecs, name)
        doc = inspect.getdoc(function) or ""
        assert doc.startswith("Return"), f"{name}: the first line must say what to return"
        for param in inspect.signature(function).parameters:
            assert f":param {param}:" in doc, f"{name}: no :param {param}: line"
        if getattr(function, f"{hookspecs.PROJECT}_spec")["firstresult"]:
            assert "Stops at first non-None result" in " ".join(doc.split()), name


def test_every_hook_is_documented_in_the_readme_plugin_section() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Writing a plugin", 1)[1].split("\n## ", 1)[0]
    for name in HOOKS:
        signature = f"{name}({', '.join(inspect.signature(getattr(hookspecs, name)).parameters)})"
        assert signature in section, f"README's plugin section lacks {signature}"


def test_every_hook_is_called_in_a_real_flow_and_implemented_by_a_plugin() -> None:
    """The engine or a worker calls each hook (not only a test poking pluggy), and a plugin implements it."""
    product = "\n".join(p.read_text() for room in ("bot", "workers", "adapters", "plugins")
                         for p in (REPO / room).rglob("*.py"))
    tests = "\n".join(p.read_text() for p in (REPO / "tests").rglob("*.py") if p.name != "test_hook_docs.py")
    for name in HOOKS:
        assert re.search(rf"\bhook\.{name}(\.call_historic)?\(", product), f"nothing in the product calls {name}"
        implemented = rf"@hookimpl[^\n]*\n\s*def {name}\("
        assert re.search(implemented, tests) or re.search(implemented, product), f"no plugin implements {name}"
