"""Does a throw-away prompt to an unreachable model warm a new directory on the opencode server?

A warm server's first prompt in a directory it has not served takes ~1-1.6 s to reach the model
(issue 14's new-conversation target is 1.5 s to the first event). This measures, on one warm
server started as a worker starts it (after one run in another directory), prompt to first
model request for a new git directory, and for a new directory that first got a prompt whose
model is a provider on a closed port (127.0.0.1:9): once that prompt's session says "retry"
(opencode has tried the model, so the directory is set up), it is aborted, no model call made.

Run: `python bench/opencode_prewarm.py` (needs `npm install`). Nothing here changes the product.
"""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.agent_runs import bench_engine  # noqa: E402
from plugins.agents.opencode_server import directory_header, running_servers  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer, Turn  # noqa: E402


def git_dir(root: Path, name: str) -> Path:
    """Make a git repository with one commit, as a conversation's workspace is."""
    d = root / name
    d.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=d, check=True)
    (d / "README").write_text("x\n")
    subprocess.run(["git", "add", "."], cwd=d, check=True)
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "init"], cwd=d, check=True)
    return d


def first_request_after(model, api, d: Path, body_model=None) -> float:
    """Prompt a new session in `d`; return seconds to the model's first request (with `body_model`:
    to the session's first "retry", i.e. its model tried)."""
    h = directory_header(d)
    sid = api.post("/session", headers=h, json={"title": "p"}).json()["id"]
    before = len(model.scripted_requests)
    body = {"parts": [{"type": "text", "text": "hi"}]}
    if body_model:
        body["model"] = body_model
    t0 = time.monotonic()
    api.post(f"/session/{sid}/prompt_async", headers=h, json=body).raise_for_status()
    if body_model:  # the dead provider: wait until the session is idle again
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline:
            st = api.get("/session/status", headers=h).json().get(sid, {}).get("type", "idle")
            if not seen or seen[-1] != st:
                seen.append(st)
            if st in ("retry", "idle") and len(seen) > 1:
                break
            time.sleep(0.02)
        took = time.monotonic() - t0
        api.post(f"/session/{sid}/abort", headers=h)
        print("  prewarm statuses:", seen, flush=True)
        return took
    deadline = time.monotonic() + 60
    while len(model.scripted_requests) <= before and time.monotonic() < deadline:
        time.sleep(0.005)
    return time.monotonic() - t0


def main() -> None:
    model = FakeOpenAIServer().start()
    dead = {"prewarm": {"npm": "@ai-sdk/openai-compatible", "name": "Dead",
                        "options": {"baseURL": "http://127.0.0.1:9/v1", "apiKey": "x"},
                        "models": {"none": {"name": "none", "limit": {"context": 1000, "output": 100}}}}}
    original = model.provider_config
    model.provider_config = lambda *a, **k: {**original(*a, **k), **dead}
    root = Path(tempfile.mkdtemp(prefix="prewarm-"))
    model.script(*[Turn.text("ok")] * 40)
    engine, _ = bench_engine(root, model, "warm")
    (server,) = running_servers()
    with server.client() as api:
        first_request_after(model, api, git_dir(root, "prime"))  # the server's first directory
        time.sleep(1)
        for n in range(3):
            cold = first_request_after(model, api, git_dir(root, f"cold{n}"))
            time.sleep(1)
            d = git_dir(root, f"warm{n}")
            pre = first_request_after(model, api, d, body_model={"providerID": "prewarm", "modelID": "none"})
            time.sleep(1)
            warm = first_request_after(model, api, d)
            print(f"cold dir first request {cold:.2f}s; prewarm prompt took {pre:.2f}s; prewarmed dir first request {warm:.2f}s",
                  flush=True)
            time.sleep(1)
    print("model requests:", len(model.scripted_requests))
    engine.close()
    model.stop()


main()
