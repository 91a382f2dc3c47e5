"""A toy command-line coding agent: prints JSON event lines, as a real CLI agent would.

Usage: `python toy_agent.py -- PROMPT`. It reads the request (the prompt's first line):
  - "sleep N": starts `sleep N` in a session of its own (as opencode's bash tool does) and
    waits for it, so that cancel and timeouts have a process tree to end;
  - "fail": says why on stderr and exits 3;
  - "slowly": pauses after its tool call, so the running status can be seen with it;
  - "length": answers at length (`LONG_LINES` numbered lines after the usual first one);
  - anything else: one tool call, then its answer.
Standard library only: it runs with the scrubbed environment agents get.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

#: Seconds the toy pauses when asked to work slowly: more than one status edit interval (1 s).
SLOW_PAUSE_S = 1.5
#: Lines of a long answer: ~20,000 characters, past the length a reply holds (REPLY_ATTACH_THRESHOLD).
LONG_LINES = 400


def emit(**event: object) -> None:
    print(json.dumps({"session": "toy-session-1", **event}), flush=True)


def main() -> int:
    request = sys.argv[-1].splitlines()[0].strip()
    words = request.split()
    if "fail" in words:
        print("toy: the workspace is on fire", file=sys.stderr, flush=True)
        return 3
    if "sleep" in words:
        seconds = words[words.index("sleep") + 1]
        emit(type="tool", name="bash", text=f"ran `sleep {seconds}`", status="running")
        child = subprocess.Popen(["sleep", seconds], start_new_session=True)
        child.wait()
        emit(type="text", text="Slept.")
        return 0
    emit(type="tool", name="bash", text="ran `ls`", status="completed")
    if "slowly" in words:
        time.sleep(SLOW_PAUSE_S)
    answer = f"Listed the files of {os.path.basename(os.getcwd())}: there are none yet."
    if "length" in words:
        answer += "".join(f"\nline {n:04d} of the long answer: nothing here either." for n in range(LONG_LINES))
    emit(type="text", text=answer)
    emit(type="tokens", input=120, output=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
