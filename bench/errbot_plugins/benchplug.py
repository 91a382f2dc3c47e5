"""Errbot plugin driven by bench/errbot_workload.py.

It mirrors the two message shapes the benchmark sends to our engine:

* ``!echo <text>``  -- an ordinary prefixed command; replies with ``<text>``.
* ``hi ...`` / ``hello ...`` -- a chat line matched by a regular expression
  without the command prefix; replies ``Hello!``.

Both handlers are written the way an Errbot user would write them (``@botcmd`` /
``@re_botcmd``) so that the benchmark exercises Errbot's normal dispatch path.
"""

import re

from errbot import BotPlugin, botcmd, re_botcmd


class BenchPlug(BotPlugin):
    """Echo command and a greeting pattern for the Errbot comparison benchmark."""

    @botcmd
    def echo(self, msg, args):
        """Reply with the text after the command: !echo <text>"""
        return args

    @re_botcmd(pattern=r"^(hi|hello)\b", prefixed=False, flags=re.IGNORECASE)
    def greet(self, msg, match):
        """Answer a greeting."""
        return "Hello!"
