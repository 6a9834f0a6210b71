"""The daemon's Unix-socket server: frames in, ops dispatched, frames out.

One asyncio loop owns every connection; each connection may carry many
requests in flight (each is its own task, answered whenever it finishes, in
any order). ONNX Runtime runs in a thread pool (it releases the GIL).

Each request is decoded into its :mod:`wire.ops` class (a malformed field is
``InvalidInput`` naming it, an unknown op ``ProtocolError``) and handed to the
handler the dispatch table (:meth:`DaemonServer._table`) names for its class.

Admission (:mod:`daemon.admission`): at most ``max_inflight`` infer requests are
admitted at once; the next one is answered ``Overloaded`` (retryable) at once
instead of queueing without bound. An admitted request goes to its version's
:class:`~daemon.batcher.Batcher` (one per loaded version, created when the
server starts or on first use), which coalesces concurrent requests into one
run and answers ``Overloaded`` when its queue is full and ``DeadlineExceeded``
for a request whose deadline passed before its batch ran. While draining, new
requests are answered ``Draining`` (retryable) and admitted ones, queued ones
included, finish.

The infer result carries ``queue_us`` (from the batcher to the start of the
run), ``compute_us`` (the run) and ``batch_rows`` (rows in that run).

An infer request's ``trace`` (the edge's daemon-call ``traceparent``, or a bare
trace id from older edges) goes to the batcher, which makes the queue and run
spans of a sampled one (``telemetry``); its trace id is the compute histogram's
exemplar.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pwd
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from daemon import metrics
from daemon.admission import Admission
from daemon.batcher import Answer, Batcher, BatchError
from daemon.batchpolicy import batch_policy
from daemon.lifecycle import Lifecycle, LifecycleError, UnknownModel
from daemon.loader import LoadedVersion
from daemon.registry import InvalidFeeds, NotFound, Registry, check_feeds
from daemon.stats import VersionStats
from telemetry import Tracing
from telemetry.w3c import parse_frame_trace
from wire import frames, messages, ops
from wire.messages import MessageError

log = logging.getLogger(__name__)

# a handler: the op and the request's deadline_ms (only infer uses it) -> the op's answer
Handler = Callable[[Any, int | None], Awaitable[ops.Answer]]


def peer_actor(writer: asyncio.StreamWriter) -> str:
    """Who is on the other end of a connection, as the kernel says (SO_PEERCRED;
    never an environment variable): ``<user> (uid N, pid P)``."""
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    except (AttributeError, OSError):
        return "unknown"
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid-{uid}"
    return f"{user} (uid {uid}, pid {pid})"


class _Fail(Exception):
    """An op's failure, already classified as a wire error type; ``field`` names
    the part of the request at fault, if any."""

    def __init__(self, type_: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.type, self.field = type_, field


class _Observer:
    """One version's metric children, looked up once (PERF: ``labels()`` on every
    answer was ~2 % of the daemon's interpreter time)."""

    def __init__(self, model: str, version: str) -> None:
        self.ok = metrics.OUTCOMES.labels(model, version, "ok")
        self.queue = metrics.QUEUE.labels(model, version)
        self.labels = (model, version)
        self.rows = metrics.BATCH_ROWS.labels(model, version)

    def __call__(self, answer: Any, trace_id: str | None = None) -> None:
        self.ok.inc()
        self.queue.observe(answer.queue_s)
        metrics.EXEMPLARS.observe(metrics.COMPUTE, self.labels, answer.compute_s, trace_id)
        self.rows.observe(answer.batch_rows)


class DaemonServer:
    """Serves ``registry`` on a Unix socket. ``ready`` turns true once
    :meth:`start` has bound the socket, false again when draining starts."""

    def __init__(self, registry: Registry, lifecycle: Lifecycle, *, max_inflight: int = 256,
                 max_frame: int = frames.DEFAULT_MAX_FRAME, inference_threads: int = 2,
                 tracing: Tracing | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.lifecycle = lifecycle
        self.admission = Admission(max_inflight)
        self.max_frame = max_frame
        self.clock = clock
        self.tracing = tracing  # started by the caller (daemon.main) after start()
        self.inference_threads = inference_threads
        self.pool = ThreadPoolExecutor(inference_threads, thread_name_prefix="infer")
        self._batchers: dict[int, Batcher] = {}  # by id(LoadedVersion); each holds its version
        self._observers: dict[tuple[str, str], _Observer] = {}
        self._stats: dict[int, VersionStats] = {}  # by id(LoadedVersion), like the batchers
        self.ready = False
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._outbox: dict[asyncio.StreamWriter, list[bytes]] = {}
        self._handlers = self._table()

    def _table(self) -> dict[type[ops.Op], Handler]:
        """The dispatch table: op class -> handler (every op of :data:`wire.ops.OPS`)."""
        return {ops.Ping: self._ping, ops.Models: self._models, ops.Metadata: self._metadata,
                ops.Infer: self._infer, ops.Index: self._index, ops.Load: self._load,
                ops.Unload: self._unload, ops.Split: self._split, ops.Rollback: self._rollback,
                ops.Stats: self._stats_of}

    async def start(self, path: str) -> None:
        for lv in self.registry.versions():  # decide (and log) every version's batching now
            self.batcher(lv)
            metrics.SHM_BYTES.labels(lv.model, lv.version).set(lv.weight_bytes)
        self._server = await asyncio.start_unix_server(self._connection, path=path,
                                                       limit=1 << 20)
        self.ready = True

    async def drain(self, timeout: float) -> bool:
        """Refuse new work, wait up to ``timeout`` for in-flight requests;
        return True if everything finished."""
        self.admission.draining = True
        self.ready = False
        if self._server is not None:
            self._server.close()
        try:
            await asyncio.wait_for(self.admission.idle.wait(), timeout)
            done = True
        except TimeoutError:
            log.warning("drain timed out with %d requests in flight", self.admission.inflight)
            done = False
        for w in list(self._writers):
            self._flush(w)
            w.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        return done

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        tasks: set[asyncio.Task] = set()
        actor = peer_actor(writer)
        try:
            while True:
                kind, req = await frames.read_frame_async(reader, self.max_frame)
                if kind != frames.REQUEST:
                    raise frames.BadFrame("expected a request frame")
                task = asyncio.create_task(self._answer(req, writer, actor))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except frames.ConnectionClosed:
            pass
        except (frames.TornFrame, ConnectionError) as exc:
            log.info("connection lost: %s", exc)
        except frames.BadFrame as exc:
            log.warning("dropping connection: %s", exc)
            self._send(writer, _failure(None, messages.PROTOCOL_ERROR, str(exc)))
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self._flush(writer)
            self._writers.discard(writer)
            writer.close()

    def _send(self, writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
        """Queue one response frame; every frame queued for ``writer`` in this turn
        of the loop goes out in one write (PERF: the answers of one batch reach the
        edge in one ``send``, and its reader takes them in one ``recv``)."""
        if writer.is_closing():
            return
        frame = self._encode(payload)
        queued = self._outbox.get(writer)
        if queued is None:
            self._outbox[writer] = [frame]
            asyncio.get_running_loop().call_soon(self._flush, writer)
        else:
            queued.append(frame)

    def _encode(self, payload: dict[str, Any]) -> bytes:
        """``payload``'s frame, or, if it would exceed ``max_frame`` (the edge's
        limit too: its reader drops a connection that sends a bigger frame, and
        every request in flight on it), an error answer to that request alone."""
        try:
            frame = frames.encode(frames.RESPONSE, payload)
            size = len(frame) - frames.HEADER.size
        except frames.BadFrame:
            frame, size = b"", 1 << 32
        if size <= self.max_frame:
            return frame
        log.warning("answer to request %s is %d bytes, over the frame limit of %d",
                    payload.get("id"), size, self.max_frame)
        return frames.encode(frames.RESPONSE, _failure(
            payload.get("id"), messages.RESULT_TOO_LARGE,
            f"the answer is {size} bytes, over the frame limit of {self.max_frame} "
            "(daemon.max_frame_bytes): send fewer rows"))

    def _flush(self, writer: asyncio.StreamWriter) -> None:
        queued = self._outbox.pop(writer, None)
        if queued and not writer.is_closing():
            writer.write(b"".join(queued) if len(queued) > 1 else queued[0])

    async def _answer(self, payload: dict[str, Any], writer: asyncio.StreamWriter,
                      actor: str = "unknown") -> None:
        """``actor``: the peer (:func:`peer_actor`). ``ping`` tells it who it is (what
        ``falconctl models`` audits as its actor); every change is logged with it."""
        self._send(writer, await self._respond(payload, actor))
        try:  # (backpressure: waits while earlier turns' answers fill the transport buffer)
            await writer.drain()
        except ConnectionError:
            pass

    async def _respond(self, payload: dict[str, Any], actor: str) -> dict[str, Any]:
        """The response payload to request ``payload``: decoded, dispatched, answered."""
        rid = payload.get("id")
        try:
            req = ops.Request.from_wire(payload)
        except ops.UnknownOp as exc:
            return _failure(rid, messages.PROTOCOL_ERROR, exc.reason, exc.field)
        except MessageError as exc:
            return _failure(rid, messages.INVALID_INPUT, exc.reason, exc.field)
        try:
            answer = await self._handlers[type(req.op)](req.op, req.deadline_ms)
        except _Fail as exc:
            return _failure(rid, exc.type, str(exc), exc.field)
        except Exception as exc:  # a bug: answer as data, keep serving, log the traceback
            log.exception("op %r failed", req.op.OP)
            return _failure(rid, messages.INTERNAL, f"{type(exc).__name__}: {exc}")
        if isinstance(answer, ops.PingAnswer):
            answer = dataclasses.replace(answer, peer=actor)
        elif not req.op.IDEMPOTENT:  # a change
            log.info("%s of %s by %s: %s", req.op.OP, getattr(req.op, "model", None), actor,
                     {k: v for k, v in answer.to_wire().items() if k != "model"})
        return ops.Response(rid, answer).to_wire()

    # -- the handlers (the dispatch table: _table) ---------------------------------------
    async def _ping(self, op: ops.Ping, _: int | None) -> ops.PingAnswer:
        return ops.PingAnswer(ready=self.ready, draining=self.admission.draining,
                              models=len(self.registry))

    async def _models(self, op: ops.Models, _: int | None) -> ops.ModelsAnswer:
        return ops.ModelsAnswer(models=[ops.ModelEntry(**m) for m in self.lifecycle.listing()])

    async def _metadata(self, op: ops.Metadata, _: int | None) -> ops.MetadataAnswer:
        lv = self._lookup(op.model, op.version)
        batching = self.batcher(lv).to_wire()
        # runs of this version at once: its batches' limit, or the pool's threads
        batching["instances"] = min(batching["max_running"], self.inference_threads)
        return ops.MetadataAnswer(**lv.metadata(), batching=batching)

    async def _index(self, op: ops.Index, _: int | None) -> ops.IndexAnswer:
        with _lifecycle_errors():
            return ops.IndexAnswer(models=[ops.IndexEntry(**e) for e in self.lifecycle.index()])

    async def _load(self, op: ops.Load, _: int | None) -> ops.LoadAnswer:
        with _lifecycle_errors():
            loaded = await self.lifecycle.load(op.model, op.version or None)
        for lv in self.registry.versions():
            metrics.SHM_BYTES.labels(lv.model, lv.version).set(lv.weight_bytes)
        return ops.LoadAnswer(model=op.model, loaded=loaded)

    async def _unload(self, op: ops.Unload, _: int | None) -> ops.UnloadAnswer:
        version = op.version or None
        going = [lv for lv in self.registry.versions() if lv.model == op.model
                 and version in (None, lv.version)]
        with _lifecycle_errors():
            unloaded = await self.lifecycle.unload(op.model, version)
        for lv in going:
            self._batchers.pop(id(lv), None)
            self._stats.pop(id(lv), None)
            metrics.SHM_BYTES.labels(lv.model, lv.version).set(0)
        return ops.UnloadAnswer(model=op.model, unloaded=unloaded)

    async def _split(self, op: ops.Split, _: int | None) -> ops.SplitAnswer:
        with _lifecycle_errors():
            return ops.SplitAnswer(**self.lifecycle.set_split(op.model, op.split))

    async def _rollback(self, op: ops.Rollback, _: int | None) -> ops.RollbackAnswer:
        with _lifecycle_errors():
            return ops.RollbackAnswer(**self.lifecycle.rollback(op.model))

    async def _stats_of(self, op: ops.Stats, _: int | None) -> ops.StatsAnswer:
        """The statistics of every loaded version, or of ``model`` (and ``version``)."""
        if op.model:
            lvs = ([self._lookup(op.model, op.version)] if op.version else
                   [lv for lv in self.registry.versions() if lv.model == op.model])
            if not lvs:
                raise _Fail(messages.NOT_FOUND, f"model {op.model!r} is not loaded")
        else:
            lvs = list(self.registry.versions())
        return ops.StatsAnswer(model_stats=[self._version_stats(lv).to_wire(
            lv.model, lv.version, executions=self.batcher(lv).executions) for lv in lvs])

    async def _infer(self, op: ops.Infer, deadline_ms: int | None) -> ops.InferAnswer:
        """Admission, then validation, then the version's batcher, then accounting."""
        received = self.clock()
        refusal = self.admission.refusal(deadline_ms)
        if refusal is not None:
            raise _Fail(*refusal)
        assert deadline_ms is not None  # (refused otherwise)
        lv = self._lookup(op.model, op.version)
        stats = self._version_stats(lv)
        feeds, outputs = self._validate(lv, op, stats, received)
        input_s = self.clock() - received  # decoding and checking the inputs
        trace = parse_frame_trace(op.trace)
        with self.admission.holding(lv):
            try:
                answer = await self.batcher(lv).infer(feeds, outputs,
                                                      received + deadline_ms / 1000.0, trace)
            except BatchError as exc:
                stats.failure(total_s=self.clock() - received)
                metrics.OUTCOMES.labels(lv.model, lv.version, exc.type).inc()
                log.info("infer %s/%s failed (%s) trace=%s: %s", lv.model, lv.version,
                         exc.type, op.trace, exc)
                raise _Fail(exc.type, str(exc)) from None
        return self._account(lv, stats, feeds, outputs, answer, received, input_s,
                             trace.trace_id if trace is not None and trace.sampled else None)

    # -- the pieces of an infer --------------------------------------------------------
    def _validate(self, lv: LoadedVersion, op: ops.Infer, stats: VersionStats,
                  received: float) -> tuple[dict[str, np.ndarray], list[str]]:
        """The ORT feeds and output names of ``op``; a malformed or unfit input is
        ``InvalidInput`` naming it and counts as a failure of ``lv``."""
        try:
            return check_feeds(lv, op.inputs.arrays(), op.outputs)
        except InvalidFeeds as exc:
            stats.failure(total_s=self.clock() - received)
            raise _Fail(messages.INVALID_INPUT, exc.reason, exc.field) from None
        except MessageError as exc:
            stats.failure(total_s=self.clock() - received)
            raise _Fail(messages.INVALID_INPUT, str(exc), "inputs") from None

    def _account(self, lv: LoadedVersion, stats: VersionStats, feeds: dict[str, np.ndarray],
                 outputs: list[str], answer: Answer, received: float, input_s: float,
                 trace_id: str | None) -> ops.InferAnswer:
        """The answer of a run, encoded, in the metrics (``trace_id``: the compute
        histogram's exemplar) and the version's statistics."""
        observer = self._observers.get((lv.model, lv.version))
        if observer is None:
            observer = self._observers[lv.model, lv.version] = _Observer(lv.model, lv.version)
        observer(answer, trace_id)
        encoding = self.clock()
        tensors = ops.Tensors.of(list(zip(outputs, answer.outputs, strict=True)))
        tensors.to_wire()  # (encoded now: the time it takes is the compute_output statistic)
        done = self.clock()
        stats.success(rows=_rows(feeds), total_s=done - received, queue_s=answer.queue_s,
                      input_s=input_s, compute_s=answer.compute_s, output_s=done - encoding)
        return ops.InferAnswer(model=lv.model, version=lv.version, outputs=tensors,
                               queue_us=int(answer.queue_s * 1e6),
                               compute_us=int(answer.compute_s * 1e6),
                               batch_rows=answer.batch_rows)

    # -- versions ------------------------------------------------------------------------
    def batcher(self, lv: LoadedVersion) -> Batcher:
        """The version's batcher, created (and its policy logged) on first use."""
        batcher = self._batchers.get(id(lv))
        if batcher is None:
            name = f"{lv.model}/{lv.version}"
            policy = batch_policy(lv.entry.config, lv.inputs, lv.outputs, model=name)
            log.info("model %s: batching %s", name,
                     f"up to {policy.max_batch_rows} rows, "
                     f"{policy.max_queue_delay_s * 1e6:.0f} us delay, "
                     f"{policy.max_queue_rows} rows queued, {policy.max_running} at once"
                     if policy.enabled
                     else f"off ({policy.reason})")
            batcher = Batcher(lv.run, policy, executor=self.pool, clock=self.clock, name=name,
                              tracing=self.tracing)
            self._batchers[id(lv)] = batcher
        return batcher

    def _version_stats(self, lv: LoadedVersion) -> VersionStats:
        stats = self._stats.get(id(lv))
        if stats is None:
            stats = self._stats[id(lv)] = VersionStats()
        return stats

    def _lookup(self, model: str, version: str | None) -> LoadedVersion:
        try:
            return self.registry.get(model, version)
        except NotFound as exc:
            raise _Fail(messages.NOT_FOUND, str(exc)) from None


def _failure(rid: Any, type_: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The response payload of a failed request (error data: :func:`wire.messages.error`)."""
    return {"id": rid, "ok": False, "error": messages.error(type_, message, field)}


@contextmanager
def _lifecycle_errors() -> Iterator[None]:
    """A model-management refusal as its wire error: an unknown model ``NotFound``,
    any other (a bad split, a failed load) ``InvalidInput`` naming its field."""
    try:
        yield
    except UnknownModel as exc:
        raise _Fail(messages.NOT_FOUND, str(exc)) from None
    except LifecycleError as exc:
        raise _Fail(messages.INVALID_INPUT, str(exc), exc.field) from None


def _rows(feeds: dict[str, Any]) -> int:
    """Rows of a request: its inputs' first dimension (1 for scalars)."""
    return max((a.shape[0] if a.ndim else 1 for a in feeds.values()), default=1)
