"""Per-version inference statistics, in the shape of the V2 statistics extension.

Usage::

    stats = VersionStats()
    stats.success(rows=3, total_s=0.004, queue_s=0.001, input_s=0.0001, compute_s=0.002,
                  output_s=0.0001)
    stats.failure(total_s=0.001)
    stats.to_wire("digits", "1", executions=batcher.executions)

The field names are Triton's (``GET /v2/models/{m}/stats``), so tools written for
Triton read them: ``inference_count`` counts rows answered (each row of a batched
request is one inference), ``execution_count`` the model runs (a batch of several
requests is one), and ``inference_stats`` holds ``{count, ns}`` pairs: ``success``
and ``fail`` per request, from the daemon receiving it to its answer (a failure: the
daemon refused its inputs, its deadline passed in the queue, or its run failed);
``queue`` per request, from entering its version's queue to the start of its run;
``compute_input``, decoding the request's tensors and checking them against the
model; ``compute_infer``, its run (a request in a batch is charged the whole batch's
run, joining the inputs and splitting the outputs included, as Triton does);
``compute_output``, encoding its outputs. Time in nanoseconds. Answers the edge served from its cache never
reach the daemon and are not counted here (the edge's ``falcon_requests_total``
counts them, ``cached="true"``).

Counters live on the daemon's event loop (one thread): no lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

NS = 1_000_000_000


@dataclass
class Duration:
    """A count of events and their summed duration."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * NS))

    def to_wire(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class VersionStats:
    """One loaded version's counters (see the module docstring)."""

    wall: Callable[[], float] = time.time
    inference_count: int = 0
    last_inference_ms: int = 0
    ok: Duration = field(default_factory=Duration)
    failed: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def success(self, *, rows: int, total_s: float, queue_s: float, input_s: float,
                compute_s: float, output_s: float) -> None:
        self.inference_count += rows
        self.last_inference_ms = int(self.wall() * 1000)
        self.ok.add(total_s)
        self.queue.add(queue_s)
        self.compute_input.add(input_s)
        self.compute.add(compute_s)
        self.compute_output.add(output_s)

    def failure(self, *, total_s: float) -> None:
        self.failed.add(total_s)

    def to_wire(self, model: str, version: str, *, executions: int) -> dict[str, Any]:
        return {"name": model, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": executions,
                "inference_stats": {"success": self.ok.to_wire(), "fail": self.failed.to_wire(),
                                    "queue": self.queue.to_wire(),
                                    "compute_input": self.compute_input.to_wire(),
                                    "compute_infer": self.compute.to_wire(),
                                    "compute_output": self.compute_output.to_wire()}}
