"""Dynamic batching: concurrent infer requests for one model version, run once.

One :class:`Batcher` per loaded model version lives on the daemon's event loop.
:meth:`Batcher.infer` queues a request and awaits its answer; the batcher
coalesces queued requests and runs them in the inference thread pool::

    request ─▶ queue (per compatible group) ─▶ batch ─▶ pool thread:
                 bounded by max_queue_rows        concatenate inputs on axis 0,
                                                  run once, split outputs by rows
                                                ◀─ answers, one per request

- A batch runs when its rows reach ``max_batch_rows`` or ``max_queue_delay``
  has passed since its first request arrived, whichever comes first, and a run
  slot is free: at most ``max_running`` batches of a version are in the pool at
  once, so while they compute, the next batch keeps filling (under load batches
  grow without any delay). A request that would overflow the batch waits for the
  next one; a request larger than ``max_batch_rows`` runs alone.
- Requests are batched together only when compatible: the same output names and
  the same shape after the first dimension for every input. Requests without a
  common first dimension (or with zero rows, or a rank-0 input) run alone, so
  ONNX Runtime gives them exactly the answer (or error) it gives unbatched.
- A request whose deadline passed before its batch runs is answered
  :class:`DeadlineExceeded` and not computed; it is checked when the batch is
  formed and again when a thread starts it.
- When ``max_queue_rows`` rows wait already, a request is refused
  :class:`QueueFull` at once (an empty queue accepts any request).
- If a batched run raises, its requests are run again one by one, so only the
  request that breaks the graph gets :class:`InferenceFailed` (batching never
  changes an answer). If an output's first dimension is not the batch's row
  count, it cannot be split: the requests run alone and the version is
  unbatched from then on (logged once).
- A one-row request that runs alone in a batching version is run as two copies
  of its row and answered with the first: ONNX Runtime's MatMul takes another
  kernel for a single row (without prepacked weights a GEMV, whose sums round
  differently from the GEMM that any batch of two or more rows uses), so the
  same row would get an answer differing in the last bits depending on whether
  it happened to share a run. Padded, a row's answer does not depend on what
  it ran with: the cache, the audit trail and an HAProxy retry of a request
  (recorded by its first attempt) all see the bits the client got.
  PERF: that second row costs a heavy model without prepacked weights a full
  GEMM instead of a GEMV (the bench's heavy model: 17 instead of 9 ms); batches
  of 2+ rows pay nothing. ``[batching] exact = false`` turns it off per model.

:func:`batch_policy` decides at load time whether a version batches at all:
only when the first dimension of every input and output is dynamic. An
unbatched version sends every request to the pool at once, alone (as the daemon
did before batching): no delay and no run-slot limit, so its queue is the pool's,
bounded by the server's ``max_inflight``.
PERF: a batching version whose recent runs (an exponential average of the
compute time) took less than ``inline_below_s`` runs its batches on the event
loop itself, not in the pool: for a model like the digits demo (~30 µs a run)
the hand-off to a pool thread and the answer's way back through the loop's
self-pipe cost several times the run. The loop is then blocked for at most about
that long per batch. In that mode a request does not start a batch at once: the
batcher pumps once per turn of the loop, after every request read in that turn
has queued, so batches still form. The first runs, and any run after a slow one,
go to the pool.
Timing of each answer: ``queue_s`` from :meth:`Batcher.infer` to the start of
its run, ``compute_s`` of the run (concatenate, run, split), ``batch_rows``.

Tracing (``tracing``, a started :class:`telemetry.Tracing`): a request queued with
a sampled ``trace`` (the edge's daemon-call span) gets a ``daemon queue`` span, and
every run that served one a ``daemon batch`` span linked to each request of the run
(:meth:`telemetry.Tracing.record_run`), made on the loop when the answers are
delivered, with the run's own times.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daemon.batchpolicy import BatchPolicy
from telemetry import Tracing
from telemetry.w3c import TraceParent
from wire import messages

log = logging.getLogger(__name__)

PAD_FAILURES_TO_UNBATCH = 3  # two-row runs that failed where the lone row worked

RunFn = Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]]
"""Runs the model: ``(feeds, output names) -> arrays`` (``LoadedVersion.run``)."""
TimerFn = Callable[[float, Callable[[], None]], Any]
"""``call_later(delay_s, callback) -> handle with cancel()``; the loop's by default."""

_SOLO: Hashable = object()  # the group key of requests that always run alone
RUN_EWMA = 0.2  # weight of the newest run in the recent run time


class BatchError(Exception):
    """Root of the batcher's errors: the request was answered without a result.
    ``type`` is the wire error type (:mod:`wire.messages`) it is answered with."""

    type = messages.INTERNAL


class QueueFull(BatchError):
    """The version's queue already holds ``max_queue_rows`` rows: requests arrive
    faster than they are computed. Retryable; the request was not queued."""

    type = messages.OVERLOADED


class DeadlineExceeded(BatchError):
    """The request's deadline passed while it waited for its batch; not computed."""

    type = messages.DEADLINE_EXCEEDED


class InferenceFailed(BatchError):
    """ONNX Runtime raised running this request alone: its values break the graph."""

    type = messages.INFERENCE_FAILED


class Stopped(BatchError):
    """The inference pool was shut down (the daemon is stopping). Retryable."""

    type = messages.DRAINING


@dataclass(frozen=True)
class Answer:
    """One request's outputs (in the order asked) and timings."""

    outputs: list[np.ndarray]
    queue_s: float
    compute_s: float
    batch_rows: int
    started: float = 0.0  # when its run started (on the batcher's clock)


@dataclass(eq=False)
class _Request:
    feeds: dict[str, np.ndarray]
    outputs: list[str]
    rows: int
    deadline: float
    enqueued: float
    future: asyncio.Future[Answer]
    trace: TraceParent | None = None


@dataclass(eq=False)
class _Group:
    """Queued requests that may share a batch, oldest first."""

    items: deque[_Request] = field(default_factory=deque)
    rows: int = 0


Outcome = Answer | BatchError


class Batcher:
    """Coalesces :meth:`infer` calls for one version (see the module docstring).

    ``run`` is called in ``executor`` threads (None: the loop's default pool);
    ``clock`` must be the clock the deadlines are on; ``timer`` schedules the
    max-delay wake-up (default: the running loop's ``call_later``). Every
    method but ``run``'s caller runs on the event loop; nothing is locked.
    Raises only :class:`BatchError` subclasses from :meth:`infer`.
    """

    def __init__(self, run: RunFn, policy: BatchPolicy, *, executor: Executor | None = None,
                 clock: Callable[[], float] = time.monotonic, timer: TimerFn | None = None,
                 name: str = "", tracing: Tracing | None = None) -> None:
        self.run = run
        self.policy = policy
        self.executor = executor
        self.clock = clock
        self.name = name
        self.tracing = tracing
        self.queued_rows = 0   # rows waiting, not yet handed to a thread
        self.running = 0       # batches handed to the pool, not finished
        self._timer_fn = timer
        self._groups: dict[Hashable, _Group] = {}
        self._timer: Any = None
        self._timer_at = math.inf
        self._split_failed = False  # set from a pool thread; a bool store is atomic
        self._pad_failures = 0  # padded runs that failed where the lone row worked
        self._recent_run_s = math.inf  # exponential average of compute_s; inf: unknown
        self._pump_soon = False  # a pump is scheduled for the end of this loop turn
        self.executions = 0  # model runs (V2 statistics' execution_count)
        self._executions_lock = threading.Lock()  # runs happen in pool threads too

    @property
    def batching(self) -> bool:
        return self.policy.enabled and not self._split_failed

    def to_wire(self) -> dict[str, Any]:
        """The policy as configured, with ``enabled`` as it is now (a version whose
        outputs or runs showed it cannot batch is unbatched at run time)."""
        wire = self.policy.to_wire()
        if wire["enabled"] and not self.batching:
            wire.update(enabled=False, reason="turned off at run time (see the daemon's log)")
        return wire

    async def infer(self, feeds: dict[str, np.ndarray], outputs: list[str],
                    deadline: float, trace: TraceParent | None = None) -> Answer:
        """Queue one request and wait for its answer. ``feeds`` are validated
        (:func:`daemon.registry.check_feeds`); ``deadline`` is on ``clock``;
        ``trace``: the request's trace context (see the module docstring)."""
        rows, key = self._classify(feeds, outputs)
        if self.queued_rows and self.queued_rows + rows > self.policy.max_queue_rows:
            raise QueueFull(f"model {self.name}: {self.queued_rows} rows queued "
                            f"(max_queue_rows {self.policy.max_queue_rows})")
        req = _Request(feeds, outputs, rows, deadline, self.clock(),
                       asyncio.get_running_loop().create_future(), trace)
        group = self._groups.setdefault(key, _Group())
        group.items.append(req)
        group.rows += rows
        self.queued_rows += rows
        if self._inline():
            if not self._pump_soon:
                self._pump_soon = True
                asyncio.get_running_loop().call_soon(self._deferred_pump)
        else:
            self._pump()
        return await req.future

    def _inline(self) -> bool:
        return self.batching and self._recent_run_s < self.policy.inline_below_s

    def _deferred_pump(self) -> None:
        self._pump_soon = False
        self._pump()

    def _classify(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> tuple[int, Hashable]:
        """``(rows, group key)``; the key is :data:`_SOLO` for a request that runs alone."""
        firsts = {a.shape[0] if a.ndim else 0 for a in feeds.values()}
        rows = firsts.pop() if len(firsts) == 1 else 0
        if not rows or not self.batching:
            return rows, _SOLO
        return rows, (tuple(outputs), tuple(sorted((n, a.shape[1:]) for n, a in feeds.items())))

    # ---------------------------------------------------------------- scheduling

    def _pump(self) -> None:
        """Start every batch that is due while a run slot is free; re-arm the timer."""
        now = self.clock()
        while self.running < self.policy.max_running:
            key = self._next_due(now)
            if key is None:
                break
            batch = self._take(key, now)
            if batch:
                self._launch(batch)
        self._arm(now)

    def _due(self, key: Hashable, group: _Group, now: float) -> bool:
        return (key is _SOLO or group.rows >= self.policy.max_batch_rows
                or now >= group.items[0].enqueued + self.policy.max_queue_delay_s)

    def _next_due(self, now: float) -> Hashable | None:
        """The due group whose oldest request is oldest, if any."""
        best, oldest = None, math.inf
        for key, group in self._groups.items():
            if self._due(key, group, now) and group.items[0].enqueued < oldest:
                best, oldest = key, group.items[0].enqueued
        return best

    def _take(self, key: Hashable, now: float) -> list[_Request]:
        """Pop the next batch from a group, answering expired requests on the way."""
        group = self._groups[key]
        batch: list[_Request] = []
        rows = 0
        while group.items:
            req = group.items[0]
            alive = not req.future.done() and req.deadline >= now
            if alive and batch and (key is _SOLO or rows + req.rows > self.policy.max_batch_rows):
                break
            group.items.popleft()
            group.rows -= req.rows
            self.queued_rows -= req.rows
            if alive:
                batch.append(req)
                rows += req.rows
            elif not req.future.done():
                req.future.set_exception(_expired(req, now))
        if not group.items:
            del self._groups[key]
        return batch

    def _arm(self, now: float) -> None:
        """Wake up when the next not-yet-due group's delay has passed."""
        due = min((g.items[0].enqueued + self.policy.max_queue_delay_s
                   for k, g in self._groups.items() if not self._due(k, g, now)),
                  default=math.inf)
        if due >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        if due < math.inf:
            timer = self._timer_fn or asyncio.get_running_loop().call_later
            self._timer = timer(max(0.0, due - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self._pump()

    def _launch(self, batch: list[_Request]) -> None:
        if self._inline():
            try:
                outcomes: list[Outcome] = self._compute(batch)
            except Exception as exc:  # a bug in _compute: answer as data, keep serving
                log.exception("model %s: batch failed", self.name)
                outcomes = [BatchError(f"{type(exc).__name__}: {exc}") for _ in batch]
            self._deliver(batch, outcomes)
            return
        loop = asyncio.get_running_loop()
        try:
            done = loop.run_in_executor(self.executor, self._compute, batch)
        except RuntimeError as exc:  # the pool was shut down
            for req in batch:
                if not req.future.done():
                    req.future.set_exception(Stopped(f"model {self.name}: {exc}"))
            return
        self.running += 1
        done.add_done_callback(lambda fut: self._finished(batch, fut))

    def _finished(self, batch: list[_Request], fut: asyncio.Future[list[Outcome]]) -> None:
        self.running -= 1
        try:
            outcomes: list[Outcome] = fut.result()
        except asyncio.CancelledError:  # the pool dropped it at shutdown
            outcomes = [Stopped(f"model {self.name}: the inference pool stopped")] * len(batch)
        except Exception as exc:  # a bug in _compute: answer as data, keep serving
            log.exception("model %s: batch failed", self.name)
            outcomes = [BatchError(f"{type(exc).__name__}: {exc}") for _ in batch]
        self._deliver(batch, outcomes)
        self._pump()

    def _deliver(self, batch: list[_Request], outcomes: list[Outcome]) -> None:
        ran = next((o for o in outcomes if isinstance(o, Answer)), None)
        if ran is not None:  # (a batch's answers all carry the compute_s of its run)
            self._recent_run_s = (ran.compute_s if self._recent_run_s == math.inf else
                                  RUN_EWMA * ran.compute_s + (1 - RUN_EWMA) * self._recent_run_s)
        if self.tracing is not None and any(r.trace is not None and r.trace.sampled
                                            for r in batch):
            self._trace(batch, outcomes)
        for req, outcome in zip(batch, outcomes, strict=True):
            if req.future.done():  # its caller went away
                continue
            if isinstance(outcome, BatchError):
                req.future.set_exception(outcome)
            else:
                req.future.set_result(outcome)

    def _trace(self, batch: list[_Request], outcomes: list[Outcome]) -> None:
        """The spans of each run among ``outcomes`` (requests that ran alone after a
        failed batch each had their own run)."""
        assert self.tracing is not None
        runs: dict[float, list[tuple[_Request, Answer]]] = {}
        for req, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Answer):
                runs.setdefault(outcome.started, []).append((req, outcome))
        model, _, version = self.name.partition("/")
        epoch = self.tracing.epoch_ns(self.clock)  # one reading: the spans' times agree
        for started, served in runs.items():
            answer = served[0][1]
            start_ns = epoch(started)
            ns = [(req.trace, epoch(req.enqueued), start_ns) for req, _ in served]
            self.tracing.record_run(
                "daemon batch", ns, start_ns, start_ns + int(answer.compute_s * 1e9),
                {"falcon.model": model, "falcon.model.version": version,
                 "falcon.batch.rows": answer.batch_rows})

    # ---------------------------------------------------------- in a pool thread

    def _execute(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """One model run (counted in :attr:`executions`, failed runs included)."""
        with self._executions_lock:
            self.executions += 1
        return self.run(feeds, names)

    def _compute(self, batch: list[_Request]) -> list[Outcome]:
        started = self.clock()
        live = [r for r in batch if r.deadline >= started]
        answers: dict[int, Outcome] = {}
        if len(live) > 1 and self.batching:
            answers = self._run_batch(live)
        for req in live:
            if id(req) not in answers:
                answers[id(req)] = self._run_alone(req)
        return [answers[id(r)] if id(r) in answers else _expired(r, started) for r in batch]

    def _run_batch(self, batch: list[_Request]) -> dict[int, Outcome]:
        """Answers by request id; empty when the batch must be run request by request."""
        started = self.clock()
        names = batch[0].outputs
        counts = [r.rows for r in batch]
        total = sum(counts)
        try:
            feeds = {name: np.concatenate([r.feeds[name] for r in batch])
                     for name in batch[0].feeds}
            arrays = self._execute(feeds, list(names))
        except Exception as exc:  # ORT's own classes; one request may poison the batch
            log.info("model %s: batch of %d requests failed (%s); running them alone",
                     self.name, len(batch), exc)
            return {}
        if self._unsplittable(names, arrays, total):
            return {}
        offsets = np.cumsum(counts)[:-1]
        parts = [np.split(a, offsets) for a in arrays]
        compute = self.clock() - started
        return {id(r): Answer([p[i] for p in parts], started - r.enqueued, compute, total, started)
                for i, r in enumerate(batch)}

    def _run_alone(self, req: _Request) -> Outcome:
        started = self.clock()
        if req.deadline < started:
            return _expired(req, started)
        try:
            arrays = self._run_padded(req) if req.rows == 1 and self._pads() else None
            if arrays is None:
                arrays = self._execute(req.feeds, list(req.outputs))
        except Exception as exc:  # ORT's own exception classes: the input broke the graph
            return InferenceFailed(str(exc))
        return Answer(list(arrays), started - req.enqueued, self.clock() - started, req.rows,
                      started)

    def _pads(self) -> bool:
        """Whether a lone one-row request runs padded: only where rows can share a run."""
        return self.batching and self.policy.exact and self.policy.max_batch_rows >= 2

    def _run_padded(self, req: _Request) -> list[np.ndarray] | None:
        """A one-row request's outputs from a run of its row twice (see the
        module docstring); None when an output cannot be split by rows. If the
        two-row run raises, the row runs alone (its error, if any, is then the
        request's own); if alone it works, the version cannot take what batching
        gives it and, after PAD_FAILURES_TO_UNBATCH such runs, is unbatched from
        then on (logged)."""
        feeds = {name: np.concatenate([a, a]) for name, a in req.feeds.items()}
        try:
            arrays = self._execute(feeds, list(req.outputs))
        except Exception as exc:  # ORT's own classes
            arrays = self._execute(req.feeds, list(req.outputs))  # raises: its own error
            self._pad_failures += 1  # NOTE: not at once: one could be an allocation failure
            if self._pad_failures >= PAD_FAILURES_TO_UNBATCH and not self._split_failed:
                self._split_failed = True
                log.warning("model %s: runs of two rows failed %d times where one row works "
                            "(last: %s); batching is off for this version", self.name,
                            self._pad_failures, exc)
            return arrays
        if self._unsplittable(req.outputs, arrays, 2):
            return None
        return [a[:1] for a in arrays]

    def _unsplittable(self, names: Sequence[str], arrays: Sequence[np.ndarray], rows: int) -> bool:
        """True (and the version unbatched from now on) when an output of a run
        of ``rows`` rows does not have them as its first dimension."""
        bad = [n for n, a in zip(names, arrays, strict=True) if a.ndim == 0 or a.shape[0] != rows]
        if bad:
            self._split_failed = True
            log.warning("model %s: output %r is not batch-major (first dimension is not the "
                        "run's %d rows); batching is off for this version", self.name, bad[0],
                        rows)
        return bool(bad)


def _expired(req: _Request, now: float) -> DeadlineExceeded:
    return DeadlineExceeded(f"deadline passed {1000 * (now - req.deadline):.1f} ms ago "
                            f"after {1000 * (now - req.enqueued):.1f} ms queued")
