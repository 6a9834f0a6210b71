"""falconctl.supervisor's policy on fake components and a fake clock: the back-off
doubles to its cap and resets after a stable run, leftovers go before a restart
(SIGTERM, then SIGKILL after the grace), a crash loop names the component."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from falconctl.stack import Stack
from falconctl.supervisor import CrashLoop, Policy, Supervisor, _State, describe_wait


@dataclass
class FakeUnit:
    name: str = "daemon"
    down: str | None = None
    left: list[int] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)
    clock: list[float] = field(default_factory=lambda: [0.0])

    def exited(self) -> str | None:
        return self.down

    def leftovers(self) -> list[int]:
        return self.left

    def reap(self) -> None:
        pass

    def restart(self) -> None:
        self.restarts.append(self.clock[0])
        self.down = None

    def log_tail(self) -> str:
        return "model repository /x is not a directory"


def supervisor(unit: FakeUnit, policy: Policy | None = None
               ) -> tuple[Supervisor, _State, io.StringIO]:
    out = io.StringIO()
    sup = Supervisor(Stack({}, Path("/nonexistent")), policy or Policy(), units=[unit],
                     clock=lambda: unit.clock[0], out=out)
    return sup, sup.states[0], out


def run_until(sup: Supervisor, unit: FakeUnit, until: float, tick: float = 0.05) -> None:
    while unit.clock[0] < until:
        sup.step(sup.states[0])
        unit.clock[0] = round(unit.clock[0] + tick, 3)


def test_back_off_doubles_to_the_cap_and_resets_after_a_stable_run():
    unit = FakeUnit()
    sup, _, out = supervisor(unit, Policy(burst=100))
    gaps = []
    for _ in range(7):
        unit.down = "killed by SIGKILL"
        died = unit.clock[0]
        run_until(sup, unit, died + 20)
        gaps.append(round(unit.restarts[-1] - died, 2))
        unit.clock[0] = unit.restarts[-1] + 1.0  # crashes again 1 s after each start
    assert gaps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert "daemon exited unexpectedly (killed by SIGKILL); restarting in 0.5 s" in out.getvalue()
    unit.clock[0] += 30  # a long run: the next crash starts over at the first delay
    unit.down, died = "exit status 1", unit.clock[0]
    run_until(sup, unit, died + 20)
    assert round(unit.restarts[-1] - died, 2) == 0.5


def test_five_exits_within_the_interval_are_a_crash_loop_naming_the_component():
    unit = FakeUnit()
    sup, _, _ = supervisor(unit)
    with pytest.raises(CrashLoop) as exc:
        for _ in range(5):
            unit.down = "exit status 1"
            run_until(sup, unit, unit.clock[0] + 11)
    assert len(unit.restarts) == 4
    message = str(exc.value)
    assert message.startswith("daemon exited 5 times within 60 s (last: exit status 1)")
    assert "is not a directory" in message


def test_exits_spread_over_more_than_the_interval_are_no_crash_loop():
    unit = FakeUnit()
    sup, _, _ = supervisor(unit)
    for _ in range(8):
        unit.down = "exit status 1"
        run_until(sup, unit, unit.clock[0] + 20)
    assert len(unit.restarts) == 8


def test_leftovers_get_sigterm_then_sigkill_and_block_the_restart():
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); print(flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline()  # SIGTERM ignored now
        unit = FakeUnit(down="killed by SIGKILL", left=[child.pid])
        sup, _, _ = supervisor(unit, Policy(leftover_grace=2.0))
        run_until(sup, unit, 1.9)
        time.sleep(0.2)
        assert child.poll() is None and unit.restarts == []  # ignored SIGTERM: still there
        run_until(sup, unit, 2.1)
        assert child.wait(5) == -signal.SIGKILL
        unit.left = []
        run_until(sup, unit, 2.2)
        assert unit.restarts == [2.1]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_exit_descriptions():
    assert describe_wait(os.CLD_EXITED, 3) == "exit status 3"
    assert describe_wait(os.CLD_KILLED, 9) == "killed by SIGKILL"
    assert describe_wait(os.CLD_DUMPED, 6) == "killed by SIGABRT (core dumped)"


def test_a_bug_in_supervision_still_stops_the_stack(monkeypatch):
    """Anything but a crash loop raised while supervising (here: a unit whose exit check
    fails) stops the stack and exits 1, instead of leaving every component running."""
    class Broken(FakeUnit):
        def exited(self) -> str | None:
            raise PermissionError("not ours")

    sup, _, out = supervisor(Broken())
    stopped: list[bool] = []
    monkeypatch.setattr(sup.stack, "stop", lambda: stopped.append(True) or {})
    assert sup.run({}, tick=0) == 1
    assert stopped == [True] and "supervision failed" in out.getvalue()


def test_a_reaped_process_has_no_leftovers_its_pid_may_be_another_groups_now(monkeypatch):
    from falconctl import supervisor as sv

    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()  # reaped: the pid (and group id) is free for the kernel to give to anyone
    # as if a process of someone else's now led a group with that id
    monkeypatch.setattr(sv, "group_members", lambda pid: [pid, 424242])

    class OneProc:
        procs = {"daemon": type("P", (), {"popen": proc})()}

    assert sv.ProcUnit(OneProc(), "daemon").leftovers() == []  # type: ignore[arg-type]
