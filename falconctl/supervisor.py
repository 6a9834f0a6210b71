"""Supervision for ``falconctl up``: what systemd's ``Restart=on-failure`` does
for the units, done for the one-host stack in the foreground.

    sup = Supervisor(stack)             # after stack.start(audit=True, cache=True)
    code = sup.run(stop)                # until stop["signal"] is set, or a crash loop

A component (daemon, edge, HAProxy, memcached, shipper, the embedded PostgreSQL)
that exits while the stack runs is logged with its exit status or signal and
started again with the same arguments (so the same ports, socket and paths)
after a back-off: ``first_delay`` doubling to ``max_delay``, reset once it has
run ``stable_after`` seconds. The daemon re-attaches to its intact shared-memory
segments, the shipper resumes from the position it stored in PostgreSQL, and
meanwhile the edge answers 503 + Retry-After (daemon down) or HAProxy does
(edge down). What a dead process leaves in its process group (a killed gunicorn
arbiter's workers, which still hold the port) is sent SIGTERM, then SIGKILL
after ``leftover_grace``, before the restart: systemd's control-group kill.

A component that exits ``burst`` times within ``interval`` seconds is a crash
loop: ``run`` stops the stack and returns 1, the message naming it, its last
exit and the tail of its log. Signal handlers only record the signal (the
``stop`` dict); this loop acts on it and returns 0.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from audit.pg import PgError
from falconctl.stack import Stack


@dataclass(frozen=True)
class Policy:
    first_delay: float = 0.5   # seconds before the first restart
    max_delay: float = 10.0    # the back-off doubles up to this
    stable_after: float = 10.0  # a run this long resets the back-off
    burst: int = 5             # this many exits ...
    interval: float = 60.0     # ... within this many seconds: a crash loop
    leftover_grace: float = 10.0  # SIGTERM to SIGKILL for a dead process's group


class Unit(Protocol):
    """One supervised component."""

    name: str

    def exited(self) -> str | None:
        """None while it runs; else how it ended ("exit status 1", "killed by
        SIGKILL"). Does not reap it yet (its pid stays reserved)."""

    def leftovers(self) -> list[int]:
        """Processes it left behind that must go before it starts again."""

    def reap(self) -> None:
        """Collect the exited process (after :meth:`leftovers` is empty)."""

    def restart(self) -> None:
        """Start it again as it was started."""

    def log_tail(self) -> str:
        """The last lines of its log."""


def describe_wait(code: int, status: int) -> str:
    """waitid's (si_code, si_status) as a person reads it."""
    if code == os.CLD_EXITED:
        return f"exit status {status}"
    try:
        name = signal.Signals(status).name
    except ValueError:
        name = f"signal {status}"
    return f"killed by {name}" + (" (core dumped)" if code == os.CLD_DUMPED else "")


def group_members(pgid: int, proc_dir: Path = Path("/proc")) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    out = []
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


@dataclass
class ProcUnit:
    """A process of ``stack`` (a child of ours, leader of its own session)."""

    stack: Stack
    name: str

    def exited(self) -> str | None:
        popen = self.stack.procs[self.name].popen
        if popen.returncode is not None:
            return describe_wait(*_from_returncode(popen.returncode))
        try:
            info = os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            popen.poll()
            return describe_wait(*_from_returncode(popen.returncode or 0))
        return None if info is None else describe_wait(info.si_code, info.si_status)

    def leftovers(self) -> list[int]:
        popen = self.stack.procs[self.name].popen
        if popen.returncode is not None:  # reaped: its pid (and group id) may be reused
            return []  # by a process that is not ours (only a zombie keeps it reserved)
        return [p for p in group_members(popen.pid) if p != popen.pid]

    def reap(self) -> None:
        self.stack.procs[self.name].popen.wait()

    def restart(self) -> None:
        self.stack.respawn(self.name)

    def log_tail(self) -> str:
        return self.stack.procs[self.name].tail()


def _from_returncode(rc: int) -> tuple[int, int]:
    return (os.CLD_KILLED, -rc) if rc < 0 else (os.CLD_EXITED, rc)


@dataclass
class PostgresUnit:
    """The embedded PostgreSQL: ``pg_ctl`` daemonizes it, so it is watched
    through ``postmaster.pid`` and started again with ``pg_ctl start`` (which
    waits for crash recovery, up to ``timeout``)."""

    stack: Stack
    name: str = "postgres"
    timeout: float = 60.0
    _pid: int = 0

    def _postmaster(self) -> int:
        assert self.stack.postgres is not None
        try:
            return int((self.stack.postgres.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def exited(self) -> str | None:
        self._pid = self._pid or self._postmaster()
        try:
            state = Path(f"/proc/{self._pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "gone"
        return None if self._pid and state not in ("Z", "X", "gone") else "postmaster gone"

    def leftovers(self) -> list[int]:
        return []  # its backends exit by themselves when the postmaster dies

    def reap(self) -> None:
        self._pid = 0

    def restart(self) -> None:
        assert self.stack.postgres is not None
        self.stack.postgres.start(self.timeout)
        self._pid = self._postmaster()

    def log_tail(self) -> str:
        return self.stack.postgres.log_tail() if self.stack.postgres else ""


@dataclass
class _State:
    unit: Unit
    started: float
    delay: float
    exits: deque[float] = field(default_factory=deque)
    down_since: float | None = None   # exited, not yet restarted
    term_sent: float | None = None    # SIGTERM to its leftovers at
    restart_at: float = 0.0


class CrashLoop(Exception):
    """A component exited ``Policy.burst`` times within ``Policy.interval``."""


class Supervisor:
    """Restart what exits (see the module docstring). ``clock`` and ``out`` are seams."""

    def __init__(self, stack: Stack, policy: Policy = Policy(), *, units: list[Unit] | None = None,
                 clock: Callable[[], float] = time.monotonic, out: TextIO = sys.stderr) -> None:
        """``units``: what to watch; default every process of ``stack`` and its
        embedded PostgreSQL."""
        self.stack = stack
        self.policy = policy
        self.clock = clock
        self.out = out
        if units is None:
            units = [ProcUnit(stack, name) for name in stack.procs]
            if stack.postgres is not None:
                units.append(PostgresUnit(stack))
        now = clock()
        self.states = [_State(u, now, policy.first_delay) for u in units]

    def say(self, message: str) -> None:
        print(f"falconctl up: {message}", file=self.out, flush=True)

    def run(self, stop: MutableMapping[str, int], tick: float = 0.1) -> int:
        """Supervise until ``stop["signal"]`` is set (then stop the stack, 0) or a
        crash loop (stop the stack, 1)."""
        code = 0
        try:
            while not stop.get("signal"):
                for state in self.states:
                    self.step(state)
                time.sleep(tick)
        except CrashLoop as exc:
            self.say(str(exc))
            code = 1
        except Exception:  # a bug here must not leave the whole stack running
            self.say("supervision failed; stopping the stack:\n" + traceback.format_exc())
            code = 1
        print("stopping...", flush=True)
        codes = self.stack.stop()
        print("stopped: " + ", ".join(f"{k} exit {v}" for k, v in codes.items()), flush=True)
        return code

    def step(self, state: _State) -> None:
        """Advance one component: notice an exit, clear its leftovers, restart it
        once its back-off has passed."""
        now = self.clock()
        if state.down_since is None:
            how = state.unit.exited()
            if how is None:
                return
            self._exited(state, how, now)
        leftovers = state.unit.leftovers()
        if leftovers:
            self._clear(state, leftovers, now)
            return
        if now < state.restart_at:
            return
        state.unit.reap()
        self.say(f"restarting {state.unit.name}")
        state.started, state.down_since, state.term_sent = self.clock(), None, None
        try:
            state.unit.restart()
        except (OSError, PgError) as exc:  # could not even start: an exit like another
            self._exited(state, f"did not start: {exc}", self.clock())

    def _exited(self, state: _State, how: str, now: float) -> None:
        p = self.policy
        name = state.unit.name
        if now - state.started >= p.stable_after:
            state.delay = p.first_delay
        state.exits.append(now)
        while state.exits and now - state.exits[0] > p.interval:
            state.exits.popleft()
        if len(state.exits) >= p.burst:
            raise CrashLoop(
                f"{name} exited {len(state.exits)} times within {p.interval:.0f} s (last: "
                f"{how}); it keeps crashing, stopping the stack. The end of its log:\n"
                f"{state.unit.log_tail()}")
        state.down_since, state.restart_at = now, now + state.delay
        self.say(f"{name} exited unexpectedly ({how}); restarting in {state.delay:g} s")
        state.delay = min(state.delay * 2, p.max_delay)

    def _clear(self, state: _State, leftovers: list[int], now: float) -> None:
        """SIGTERM what the dead process left in its group, SIGKILL after the grace."""
        if state.term_sent is None:
            state.term_sent = now
            sig = signal.SIGTERM
        elif now - state.term_sent >= self.policy.leftover_grace:
            sig = signal.SIGKILL
        else:
            return
        for pid in leftovers:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
