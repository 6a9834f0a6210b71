"""Helpers shared by the benchmarks: process trees, CPU time and memory from
/proc, signals, and cleaning up a bench's stacks."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import Protocol, TypeVar

TICK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (index 0 is the state,
    1 the parent pid)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def parents() -> dict[int, int]:
    """pid -> parent pid, for every process alive now."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = int(proc_stat(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def children(pid: int) -> list[int]:
    return sorted(p for p, pp in parents().items() if pp == pid)


def descendants(roots: list[int]) -> list[int]:
    """``roots`` (those alive) and all their descendants, sorted."""
    parent = parents()
    kids: dict[int, list[int]] = {}
    for p, pp in parent.items():
        kids.setdefault(pp, []).append(p)
    out, todo = [], [r for r in roots if r in parent]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return sorted(out)


Cpu = tuple[float, float, int, int]  # user s, system s, voluntary, preempted switches


def cpu_s(pids: list[int]) -> Cpu:
    """(user s, system s, voluntary and involuntary context switches) summed over
    ``pids`` and their threads (a process gone meanwhile counts nothing)."""
    user = system = switches = preempted = 0
    for pid in pids:
        try:
            st = proc_stat(pid)
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        user, system = user + int(st[11]), system + int(st[12])  # fields 14, 15 of stat
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt"):
                            switches += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt"):
                            preempted += int(line.split()[1])
            except OSError:
                continue
    return user / TICK, system / TICK, switches, preempted


def groups(roots: Mapping[str, int]) -> dict[str, list[int]]:
    """{group: its root pid and all its descendants} for {group: root pid}."""
    return {name: descendants([pid]) for name, pid in roots.items()}


def groups_cpu(pids: Mapping[str, list[int]]) -> dict[str, Cpu]:
    """:func:`cpu_s` of each group of :func:`groups`."""
    return {name: cpu_s(group) for name, group in pids.items()}


def cpu_delta(before: Mapping[str, Cpu], after: Mapping[str, Cpu]) -> dict[str, Cpu]:
    """What each group spent between two :func:`groups_cpu` readings."""
    return {name: (after[name][0] - before[name][0], after[name][1] - before[name][1],
                   after[name][2] - before[name][2], after[name][3] - before[name][3])
            for name in after}


def host_busy_s() -> float:
    """CPU seconds the whole host has spent busy (all cores; /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / TICK


def rollup(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` as {key: kB}."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0])
    return out


def pss_kb(pid: int) -> int:
    """Proportional set size of a process in kB (0 if it is gone)."""
    try:
        return rollup(pid).get("Pss", 0)
    except OSError:
        return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so a bench's ``finally`` stops what it started."""
    signal.signal(signal.SIGTERM, _interrupt)


class Closable(Protocol):
    def close(self) -> list[str]: ...


C = TypeVar("C", bound=Closable)


@contextmanager
def cleaned_up(bench: C) -> Iterator[C]:
    """Yield ``bench``; then ``bench.close()`` (stop its stacks, unlink its
    segments) however we leave, and say which segments were left behind."""
    try:
        yield bench
    finally:
        leaked = bench.close()
        if leaked:
            print(f"unlinked segments left behind: {leaked}", file=sys.stderr)
