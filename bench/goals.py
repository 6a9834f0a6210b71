"""Issue 13's performance goals, judged as ratios from one ``bench/compare.py`` run.

``verdicts(runs, ceilings)`` compares the ``platform`` contender with the ``seed`` (the
async seed) run by run and returns one :class:`Verdict` per goal: the goal, the measured
ratio, met or missed, or "not measured" when this run lacks one of the two (another
``--models``/``--connections`` choice). The memory goal is measured by
``bench/memory.py``, not here: its verdict line says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class RunLike(Protocol):  # bench/compare.py's Run
    contender: str
    model: str
    connections: int
    offered_rps: float
    p50_ms: float
    p99_ms: float
    answered: int
    cpu_s: dict[str, float]

    @property
    def ok_rps(self) -> float: ...

    @property
    def errors(self) -> int: ...


@dataclass
class Verdict:
    goal: str
    ratio: float | None  # measured, platform / reference
    limit: float
    at_least: bool  # the goal is ratio >= limit (else ratio <= limit)
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.ratio is None:
            return None
        return self.ratio >= self.limit if self.at_least else self.ratio <= self.limit

    def line(self) -> str:
        if self.ratio is None:
            return f"- {self.goal}: {self.note or 'not measured in this run'}"
        sign = "≥" if self.at_least else "≤"
        note = f" ({self.note})" if self.note else ""
        return (f"- {self.goal}: **{self.ratio:.2f}×** (goal {sign} {self.limit:g}×): "
                f"{'met' if self.met else 'missed'}{note}")


def find(runs: Sequence[RunLike], contender: str, model: str,
         connections: int | None) -> RunLike | None:
    """The run of ``contender`` on ``model`` with that many connections (None: the
    fixed-rate run)."""
    for r in runs:
        if r.contender == contender and r.model == model and (
                (connections is None and r.offered_rps > 0)
                or (r.offered_rps == 0 and r.connections == connections)):
            return r
    return None


def cpu_per_request(runs: Sequence[RunLike], contender: str, model: str) -> float | None:
    """CPU seconds of every process over every run of ``contender`` on ``model``,
    per answered request."""
    mine = [r for r in runs if r.contender == contender and r.model == model]
    answered = sum(r.answered for r in mine)
    return sum(sum(r.cpu_s.values()) for r in mine) / answered if answered else None


def versus(runs: Sequence[RunLike], goal: str, model: str, connections: int | None,
           value: Callable[[RunLike], float], limit: float, at_least: bool) -> Verdict:
    """platform's ``value`` over the seed's, in the same run type."""
    mine = find(runs, "platform", model, connections)
    seed = find(runs, "seed", model, connections)
    if mine is None or seed is None or not value(seed):
        return Verdict(goal, None, limit, at_least)
    errors = mine.errors + seed.errors
    note = f"errors: platform {mine.errors}, seed {seed.errors}" if errors else ""
    return Verdict(goal, value(mine) / value(seed), limit, at_least, note)


def verdicts(runs: Sequence[RunLike], ceilings: Sequence[dict[str, Any]]) -> list[Verdict]:
    def rps(r: RunLike) -> float:
        return r.ok_rps

    def p50(r: RunLike) -> float:
        return r.p50_ms

    def p99(r: RunLike) -> float:
        return r.p99_ms

    out = [
        versus(runs, "digits, 16 connections: req/s ≥ 1.0× the seed's", "digits", 16, rps,
               1.0, True),
        versus(runs, "digits, 64 connections: req/s ≥ 1.0× the seed's", "digits", 64, rps,
               1.0, True),
        versus(runs, "digits, fixed rate: p99 ≤ the seed's", "digits", None, p99, 1.0, False),
        versus(runs, "heavy, 64 connections: req/s ≥ 4× the seed's", "heavy", 64, rps, 4.0,
               True),
    ]
    mine = find(runs, "platform", "heavy", 64)
    best = next((c["best_rows_per_s"] for c in ceilings if c["model"] == "heavy"), None)
    goal = "heavy, 64 connections: req/s ≥ 60 % of the in-process batched ceiling (rows/s)"
    out.append(Verdict(goal, mine.ok_rps / best if mine and best else None, 0.6, True))
    out += [
        versus(runs, "heavy, 64 connections: p99 ≤ 0.3× the seed's", "heavy", 64, p99, 0.3,
               False),
        versus(runs, "heavy, fixed rate: p50 ≤ 1.5× the seed's", "heavy", None, p50, 1.5,
               False),
        versus(runs, "heavy, fixed rate: p99 ≤ the seed's", "heavy", None, p99, 1.0, False),
    ]
    mine_cpu = cpu_per_request(runs, "platform", "digits")
    seed_cpu = cpu_per_request(runs, "seed", "digits")
    out.append(Verdict(
        "CPU per digits request, all processes (every digits run): ≤ 1.5× the seed's",
        mine_cpu / seed_cpu if mine_cpu is not None and seed_cpu else None, 1.5, False,
        f"{1e6 * mine_cpu:,.0f} vs {1e6 * seed_cpu:,.0f} µs"
        if mine_cpu is not None and seed_cpu else ""))
    out.append(Verdict("memory, 8 edge workers and the heavy model: total PSS ≤ 1/4 of the "
                       "seed's", None, 0.25, False,
                       "measured by `bench/memory.py` (`make bench` does not run it)"))
    return out
