"""Memory of the agent's side of a run: the PSS of its process trees, sampled while it runs.

RSS counts a page in every process that maps it, so a sum of RSS over processes that share
pages (the 185 MB opencode binary and its libraries in every cold `opencode run`, pages a
fork shares with its parent) counts them again per process. PSS (`Pss:` in
/proc/PID/smaps_rollup) divides each shared page among the processes that map it: summed over
processes, it is the memory they take together. Where smaps_rollup cannot be read, RSS stands
in for it.

The agent's side is every process tree below this process whose root runs the agent's
binary (also through `unshare`): the warm `opencode serve`, or the cold `opencode run`s, with
the tools they started. Not counted: this process (in the bench it also hosts the scripted
model, the engine and the worker) and the git commands the worker runs itself.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Seconds between two samples (about 0.13 s apart in practice on 2 busy cores): a run's
#: new-directory start, ~1 s of rising memory, is seen several times.
SAMPLE_INTERVAL_S = 0.1
#: kcmp(2): its syscall number on x86-64 and the comparison of two processes' address spaces.
SYS_KCMP = 312
KCMP_VM = 1


@dataclass(frozen=True)
class ProcessMemory:
    """One process's memory, in kB: PSS (RSS when smaps_rollup is unreadable), RSS, PSS of anonymous pages."""

    pss_kb: int
    rss_kb: int
    anon_pss_kb: int


def process_memory(pid: int) -> ProcessMemory | None:
    """Return a process's PSS, RSS and anonymous PSS from /proc (None when it is gone)."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, _, rest = line.partition(":")
            values[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        values = {}
    if "Pss" in values:
        return ProcessMemory(values["Pss"], values.get("Rss", 0), values.get("Pss_Anon", values["Pss"]))
    rss = vm_rss_kb(pid)
    return ProcessMemory(rss, rss, rss) if rss is not None else None


def vm_rss_kb(pid: int) -> int | None:
    """Return a process's VmRSS in kB (None when it is gone): the old measure, cheap to read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def command_name(pid: int) -> str:
    """Return the process's command name (`comm`), or "?" when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def runs_binary(pid: int, names: tuple[str, ...]) -> bool:
    """Return True when the process's command line, up to "--", starts one of the binaries named."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    for arg in argv:
        if arg == b"--":
            break
        if os.path.basename(arg.decode(errors="replace")).startswith(names):
            return True
    return False


def parents() -> dict[int, int]:
    """Return every live process's parent pid, from one pass over /proc."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The command name may hold spaces and parentheses: the ppid follows the last ')'.
                found[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return found


def below(root: int, children: dict[int, list[int]]) -> list[int]:
    """Return the processes below `root` in a parent -> children map."""
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


_libc = ctypes.CDLL(None, use_errno=True)


def same_memory(first: int, second: int) -> bool:
    """Return True when two processes share one address space (kcmp KCMP_VM, Linux x86-64).

    A process spawned with vfork (posix_spawn) shares its parent's memory until it execs: it
    shows the parent's whole RSS and PSS, and a sum over processes would count them twice.
    """
    return platform.machine() == "x86_64" and _libc.syscall(SYS_KCMP, first, second, KCMP_VM, 0, 0) == 0


@dataclass
class Sample:
    """The memory of the agent's side at one moment, in kB, with the whole tree's RSS beside it."""

    at: float
    pss_kb: int
    rss_kb: int
    anon_pss_kb: int
    whole_tree_rss_kb: int
    #: Per command name: (processes, summed PSS in kB).
    by_command: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: The rest of the whole tree (this process included), per command name: (processes, summed RSS in kB).
    others_rss: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Processes of the agent's side not counted because they share their parent's memory (a
    #: spawn before its exec), and their RSS: the old measure counted it again.
    shared: int = 0
    shared_rss_kb: int = 0


def sample(parent: int | None = None, names: tuple[str, ...] = ("opencode",), whole_tree: bool = True) -> Sample:
    """Return the memory of the agent trees below `parent` (this process by default) now.

    An agent tree is one whose root, a child of `parent`, runs one of the binaries named.
    `whole_tree_rss_kb` is what the bench measured before: the summed RSS of `parent` and every
    process below it.
    """
    parent = os.getpid() if parent is None else parent
    parent_of = parents()
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    agent = {pid for root in children.get(parent, []) if runs_binary(root, names) for pid in (root, *below(root, children))}
    current = Sample(time.perf_counter(), 0, 0, 0, 0)
    for pid in agent:
        # Asked before the memory is read: a spawn that shares its parent's memory may exec
        # between the two reads, and then its figures would be the parent's under its new name.
        shares = parent_of.get(pid) in agent and same_memory(parent_of[pid], pid)
        memory = process_memory(pid)
        if memory is None:
            continue
        if shares:
            current.shared += 1
            current.shared_rss_kb += memory.rss_kb
            continue
        current.pss_kb += memory.pss_kb
        current.rss_kb += memory.rss_kb
        current.anon_pss_kb += memory.anon_pss_kb
        name = command_name(pid)
        count, kb = current.by_command.get(name, (0, 0))
        current.by_command[name] = (count + 1, kb + memory.pss_kb)
    if whole_tree:
        for pid in (parent, *below(parent, children)):
            kb = vm_rss_kb(pid) or 0
            current.whole_tree_rss_kb += kb
            if pid not in agent:
                name = command_name(pid)
                count, total = current.others_rss.get(name, (0, 0))
                current.others_rss[name] = (count + 1, total + kb)
    return current


class Sampler:
    """Calls `take` in a thread every `interval` seconds while the block runs (once at least)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def take(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            self.take()
            if self._stop.wait(self.interval):
                return


class AgentMemory(Sampler):
    """Samples the agent's memory in a thread while the block runs; keeps the samples and their peaks."""

    def __init__(self, names: tuple[str, ...] = ("opencode",), interval: float = SAMPLE_INTERVAL_S) -> None:
        super().__init__(interval)
        self.names = names
        self.samples: list[Sample] = []

    def take(self) -> None:
        self.samples.append(sample(names=self.names))

    @property
    def peak(self) -> Sample:
        """Return the sample with the highest PSS of the agent's side."""
        return max(self.samples, key=lambda s: s.pss_kb)

    @property
    def peak_rss_kb(self) -> int:
        """Return the highest summed RSS of the agent's side (not necessarily at the PSS peak)."""
        return max(s.rss_kb for s in self.samples)

    @property
    def peak_whole_tree(self) -> Sample:
        """Return the sample with the highest summed RSS of this process and everything below it (the old measure)."""
        return max(self.samples, key=lambda s: s.whole_tree_rss_kb)

    @property
    def shared_samples(self) -> int:
        """Return how many samples met a process sharing its parent's memory (not counted twice here)."""
        return sum(1 for s in self.samples if s.shared)


@dataclass(frozen=True)
class MemoryFigure:
    """The agent side's memory around N concurrent runs: samples before, at the peak and after."""

    #: Just after the start (warm: the server before its first prompt), and idle before the runs.
    started: Sample
    idle: Sample
    peak: Sample
    after: Sample
    #: The highest summed RSS of the agent's side, and the sample where the bench's whole tree
    #: had its highest summed RSS (the old measure).
    peak_rss_kb: int
    peak_whole_tree: Sample
    wall_s: float
    #: The most runs seen inside their tool (`sleep`) at once: N when all N ran concurrently.
    overlap: int
    #: Runs whose model got the tool's result back (N when all N ran to their answer).
    answered: int
    restarts: int
    samples: int
    #: Samples that met a process sharing its parent's memory (counted once here, twice by RSS sums).
    shared_samples: int


def describe(by_command: dict[str, tuple[int, int]]) -> str:
    """Return "opencode 1 x 812 MB, bash 8 x 1.1 MB" from per-command memory in kB, largest first."""
    parts = []
    for name, (count, kb) in sorted(by_command.items(), key=lambda item: -item[1][1]):
        each = kb / count / 1024
        parts.append(f"{name} {count} x {each:.0f} MB" if each >= 10 else f"{name} {count} x {each:.1f} MB")
    return ", ".join(parts) or "none"
