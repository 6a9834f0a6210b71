"""The edge core: everything a request goes through, with no HTTP in it.

Pipeline: (parse, done by the transport) -> model metadata (which version
answers) -> validate -> cache lookup -> daemon call (behind a breaker) ->
classification (an output asked for as its top K classes, edge/classification.py) ->
audit (the WAL append, before any response leaves) -> result. Both HTTP faces (``edge.resources``) are thin adapters
over :class:`Core`; so are the tests.

Tracing: with a request span in ``RequestContext.span`` (``edge.tracing``), each step
of an inference is a child span (``validate``, ``cache lookup``, ``daemon infer``,
whose ``traceparent`` travels in the frame's ``trace`` field so the daemon's spans
join the trace, and ``wal append``); without one (tracing off, not sampled) the
steps pay a no-op context manager and the frame carries the bare trace id.

Raises only :mod:`edge.errors` classes; the daemon's error data
(:class:`wire.messages.RemoteError`) is translated here, in one table.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge import classification, errors
from edge.audit import Auditor, Canonical, RequestContext, canonical, input_digest
from edge.breaker import Breaker, Open
from edge.cache import PredictionCache, cache_key
from edge.daemon_client import DaemonClient
from edge.validation import ModelMeta, check_tensors, instances_to_inputs
from telemetry import Tracing, traceparent_of
from wire import messages, ops
from wire.messages import MessageError, RemoteError

SERVER_NAME = "falcon-inference"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics", "model_configuration",
              "classification")
LISTING_TTL_S = 0.5

_REMOTE: dict[str, Callable[[str], errors.EdgeError]] = {
    messages.NOT_FOUND: errors.ModelNotFound,
    messages.OVERLOADED: lambda m: errors.Unavailable(f"daemon overloaded: {m}", 1.0),
    messages.DRAINING: lambda m: errors.Unavailable(f"daemon draining: {m}", 1.0),
    messages.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    messages.INFERENCE_FAILED: errors.InferenceFailed,
    messages.RESULT_TOO_LARGE: errors.ResultTooLarge,
}


def translate(exc: RemoteError) -> errors.EdgeError:
    if exc.type == messages.INVALID_INPUT:  # the field travels apart from the message
        return errors.InvalidInput(exc.field or "inputs", exc.message)
    make = _REMOTE.get(exc.type)
    if make is None:
        return errors.Unavailable(f"daemon error {exc.type}: {exc.message}", 1.0)
    return make(exc.message)


@dataclass
class InferResult:
    model: str
    version: str
    outputs: list[tuple[str, np.ndarray]]
    queue_us: int = 0
    compute_us: int = 0
    cached: bool = False

    def output(self, name: str) -> np.ndarray | None:
        return next((a for n, a in self.outputs if n == name), None)


@dataclass
class Prediction:
    model: str
    version: str
    rows: list[dict[str, Any]]
    cached: bool = False


class Core:
    """Transport-free serving core of one edge worker (thread-safe)."""

    def __init__(self, client: DaemonClient, *, auditor: Auditor | None = None,
                 cache: PredictionCache | None = None, breaker: Breaker | None = None,
                 deadline_ms: int = 2000, max_rows: int = 1024, metadata_ttl_s: float = 2.0,
                 tracing: Tracing | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.tracing = tracing or Tracing()  # (off: its child spans are no-ops)
        self.auditor = auditor
        self.cache = cache
        self.breaker = breaker or Breaker("daemon", count=(errors.Unavailable,))
        self.deadline_ms = deadline_ms
        self.max_rows = max_rows
        self.metadata_ttl_s = metadata_ttl_s
        self.clock = clock
        self._meta: dict[tuple[str, str], tuple[float, ModelMeta]] = {}
        self._listing_cache: tuple[float, dict[str, ops.ModelEntry]] | None = None
        self._lock = threading.Lock()

    # -- deadlines ---------------------------------------------------------
    def deadline(self, requested_ms: int | None = None, queued_s: float = 0.0) -> float:
        """Absolute deadline: the configured default, lowered (never raised) by the
        client, minus the time the request already spent queued in front of us."""
        ms = self.deadline_ms if requested_ms is None else min(requested_ms, self.deadline_ms)
        return self.clock() + ms / 1000.0 - queued_s

    def _call(self, op: ops.Op[ops.A], deadline: float) -> ops.A:
        """``op``'s answer from the daemon, behind the daemon breaker (which counts
        only the daemon being unreachable, not errors it answers with)."""
        try:
            return self.breaker.call(self.client.call, op, deadline)
        except Open:
            raise errors.Unavailable("inference daemon unavailable (circuit open)",
                                     retry_after=self.breaker.retry_after()) from None
        except RemoteError as exc:
            raise translate(exc) from None
        except MessageError as exc:
            raise errors.Unavailable(f"malformed daemon answer: {exc}") from None

    # -- health and metadata ----------------------------------------------
    def ready(self) -> bool:
        """Ready when the daemon answers, is not draining and serves a model, and
        the audit log takes records (not in a failed stream's back-off)."""
        if self.auditor is not None and not self.auditor.healthy():
            return False
        try:
            state = self._call(ops.Ping(), self.clock() + 0.5)
        except errors.EdgeError:
            return False
        return state.ready and state.models > 0

    def models(self, deadline: float) -> list[ops.ModelEntry]:
        return self._call(ops.Models(), deadline).models

    def _listing(self, deadline: float) -> dict[str, ops.ModelEntry]:
        """The daemon's models with their traffic splits, cached at most
        ``LISTING_TTL_S`` so a split change reaches every worker within a second."""
        now = self.clock()
        with self._lock:
            cached = self._listing_cache
        if cached is not None and now - cached[0] < min(self.metadata_ttl_s, LISTING_TTL_S):
            return cached[1]
        listing = {m.name: m for m in self.models(deadline)}
        with self._lock:
            self._listing_cache = (now, listing)
        return listing

    def resolve(self, model: str, version: str | None, routing_key: str,
                deadline: float) -> str:
        """The version that answers: the pinned one, else the traffic split's
        choice for this routing key (sticky), else the highest version."""
        if version:
            return version
        entry = self._listing(deadline).get(model)
        if entry is None:
            raise errors.ModelNotFound(f"model {model!r} is not loaded")
        if sum(w for w in entry.split.values() if w > 0) > 0:  # (the daemon lists loaded versions only)
            return choose(entry.split, f"{model}\0{routing_key}")
        return entry.default_version

    def metadata(self, model: str, version: str | None, deadline: float) -> ModelMeta:
        version = version or self.resolve(model, None, "", deadline)
        key = (model, version)
        now = self.clock()
        with self._lock:
            hit = self._meta.get(key)
        if hit is not None and now - hit[0] < self.metadata_ttl_s:
            return hit[1]
        listing = self._listing(deadline)
        if model not in listing:
            raise errors.ModelNotFound(f"model {model!r} is not loaded")
        data = self._call(ops.Metadata(model=model, version=version), deadline)
        meta = ModelMeta.from_answer(data, tuple(listing[model].versions))
        with self._lock:
            self._meta[key] = (now, meta)
        return meta

    def manage(self, op: ops.Op[ops.A], deadline: float) -> ops.A:
        """A model-management op of the daemon (load, unload, split, rollback,
        index); its refusal (bad split, failed load) is an InvalidInput naming the
        field, an unknown model or version ModelNotFound."""
        result = self._call(op, deadline)
        with self._lock:
            self._listing_cache = None  # this worker sees the change at once
        return result

    def stats(self, model: str | None, version: str | None,
              deadline: float) -> ops.StatsAnswer:
        """The daemon's inference statistics (V2 statistics extension) of every loaded
        version, of ``model``'s, or of one version; ModelNotFound if none is loaded."""
        return self._call(ops.Stats(model=model or None, version=version if model else None),
                          deadline)

    def model_ready(self, model: str, version: str | None, deadline: float) -> bool:
        try:
            self.metadata(model, version, deadline)
        except errors.ModelNotFound:
            return False
        return True

    def model_state(self, model: str, version: str | None, deadline: float) -> bool:
        """True when the model (version) is loaded, False when the repository has it
        but it is not loaded; ModelNotFound when it is neither (only the repository
        index tells a known model that is not loaded from an unknown one)."""
        if self.model_ready(model, version, deadline):
            return True
        index = self._call(ops.Index(), deadline).models
        if not any(e.name == model and version in (None, e.version) for e in index):
            what = f"version {version!r} of model {model!r}" if version else f"model {model!r}"
            raise errors.ModelNotFound(f"{what} is not in the repository")
        return False

    def model_names(self, deadline: float) -> list[str]:
        """Every model the repository holds or the daemon serves, sorted, once each
        (loaded or not: :meth:`model_state` says which)."""
        names = {e.name for e in self._call(ops.Index(), deadline).models}
        return sorted(names.union(self._listing(deadline)))

    # -- inference ---------------------------------------------------------
    def infer(self, ctx: RequestContext, model: str, version: str | None,
              inputs: list[tuple[str, np.ndarray]], outputs: list[str] | None,
              deadline: float, classes: dict[str, int] | None = None,
              max_answer_bytes: int | None = None) -> InferResult:
        """The requested ``outputs`` (None: all) of the model for ``inputs``.

        ``classes`` (output name -> K, Triton's classification extension,
        :mod:`edge.classification`): those outputs are served as their top K classes.
        The cache holds, and the audit record keeps, the model's own outputs; the
        record's ``extra["classification"]`` says which were served ranked, with K.
        ``max_answer_bytes``: the most the face can send (gRPC's message limit); a larger
        answer is ResultTooLarge before it is audited, never recorded as served."""
        meta = self.metadata(model, self.resolve(model, version, ctx.routing, deadline), deadline)
        with self.tracing.child(ctx.span, "validate") as span:
            check_tensors(meta, inputs, self.max_rows)
            if outputs is not None:
                known = {t.name for t in meta.outputs}
                for i, name in enumerate(outputs):
                    if name not in known:
                        raise errors.InvalidInput(f"outputs[{i}].name", f"model {model!r} has no "
                                                  f"output {name!r} (outputs: {', '.join(sorted(known))})")
            if classes:
                classification.check(meta, outputs or [], classes)
            if span is not None:
                _rows(ctx, span, inputs)
        result, canon = self._answer(meta, inputs, deadline, ctx)
        if outputs is not None:
            result.outputs = [(n, a) for n, a in result.outputs if n in outputs]
        if not classes:
            _fits(result.outputs, max_answer_bytes)
            self._audit(ctx, result, canon, None)
            return result
        served = classification.render(meta, result.outputs, classes,  # (refused: no record)
                                       requested=outputs)
        _fits(served, max_answer_bytes)
        self._audit(ctx, result, canon, None, {"classification": dict(classes)})
        result.outputs = served
        return result

    def predict(self, ctx: RequestContext, model: str, version: str | None, instances: Any,
                deadline: float) -> Prediction:
        """The simple face: rows in, a label and class probabilities per row out."""
        meta = self.metadata(model, self.resolve(model, version, ctx.routing, deadline), deadline)
        with self.tracing.child(ctx.span, "validate") as span:
            inputs = instances_to_inputs(meta, instances, self.max_rows)
            if span is not None:
                _rows(ctx, span, inputs)
        result, canon = self._answer(meta, inputs, deadline, ctx)
        rows = classify(meta, result)
        self._audit(ctx, result, canon, [row.get("label") for row in rows])
        return Prediction(result.model, result.version, rows, result.cached)

    def _answer(self, meta: ModelMeta, inputs: list[tuple[str, np.ndarray]],
                deadline: float, ctx: RequestContext) -> tuple[InferResult, Canonical | None]:
        """Every output of ``meta``'s version for ``inputs``: from the cache when
        the model allows it and it has them, else from the daemon."""
        canon = canonical(inputs) if self.cache or self.auditor else None
        if self.cache is None or not meta.cache_enabled or canon is None \
                or not meta.content_digest:  # (a daemon that does not say: no cache)
            return self._run(meta, inputs, deadline, ctx), canon
        key = cache_key(meta.name, meta.content_digest, input_digest(canon[0]))
        with self.tracing.child(ctx.span, "cache lookup") as span:
            hit = self.cache.get(meta.name, key)
            if span is not None:
                span.set_attribute("falcon.cached", hit is not None)
        if hit is not None:
            return InferResult(meta.name, meta.version, hit, cached=True), canon
        result = self._run(meta, inputs, deadline, ctx)
        if result.version == meta.version:
            self.cache.set(key, result.outputs, meta.cache_ttl_s)
        return result, canon

    def _audit(self, ctx: RequestContext, result: InferResult, canon: Canonical | None,
               labels: list[Any] | None, extra: dict[str, Any] | None = None) -> None:
        """Append the audit record; raises Unavailable if the WAL refuses it."""
        if self.auditor is not None and canon is not None:
            with self.tracing.child(ctx.span, "wal append"):
                self.auditor.record(ctx, model=result.model, version=result.version, canon=canon,
                                    outputs=result.outputs, labels=labels, cached=result.cached,
                                    extra=extra)

    def _run(self, meta: ModelMeta, inputs: list[tuple[str, np.ndarray]],
             deadline: float, ctx: RequestContext) -> InferResult:
        with self.tracing.child(ctx.span, "daemon infer", {"falcon.model": meta.name,
                                "falcon.model.version": meta.version}, client=True) as span:
            op = ops.Infer(model=meta.name, version=meta.version, inputs=ops.Tensors.of(inputs),
                           trace=ctx.trace_id if span is None else traceparent_of(span))
            result = self._call(op, deadline)
            if span is not None:
                for name in ("queue_us", "compute_us", "batch_rows"):
                    span.set_attribute(f"falcon.daemon.{name}", getattr(result, name) or 0)
        try:
            arrays = result.outputs.arrays()
        except MessageError as exc:
            raise errors.Unavailable(f"malformed daemon answer: {exc}") from None
        return InferResult(result.model, result.version, arrays, result.queue_us,
                           result.compute_us)


def _rows(ctx: RequestContext, span: Any, inputs: list[tuple[str, np.ndarray]]) -> None:
    """The request's rows on its validate span and its request span."""
    rows = int(inputs[0][1].shape[0]) if inputs and inputs[0][1].ndim else 1
    span.set_attribute("falcon.rows", rows)
    ctx.span.set_attribute("falcon.rows", rows)


def choose(split: dict[str, int], routing_key: str) -> str:
    """The version of ``split`` (version -> weight) for ``routing_key``: the same
    key always gets the same version (sticky), keys spread by weight."""
    versions = sorted((v for v, w in split.items() if w > 0), key=int)
    total = sum(split[v] for v in versions)
    point = int.from_bytes(hashlib.sha256(routing_key.encode()).digest()[:8], "big") % total
    for v in versions:
        point -= split[v]
        if point < 0:
            return v
    return versions[-1]


def classify(meta: ModelMeta, result: InferResult) -> list[dict[str, Any]]:
    """Per row: ``label`` and ``probabilities`` (class label -> probability).

    The probabilities are the output the model config names, else the model's
    ZipMap output (served as [N, C], its class labels in the metadata), else the
    first 2-D float output of two or more columns. Their keys are the class labels (JSON keys: an int
    label ``0`` is the key ``"0"``), else the config's ``labels``, else column
    numbers. The label is the label output as the model gives it (a string or an
    integer): the one the config names, else, for a model with class labels, the
    first other output with one value per row of ints or strings; without one, the
    class label of the highest probability. A model without probabilities answers
    ``{"output": row}`` with its first output's row.
    """
    spec = meta.probabilities_spec()
    probs = result.output(spec.name) if spec is not None else None
    if probs is None:
        probs = next((a for _, a in result.outputs
                      if a.dtype.kind == "f" and a.ndim == 2 and a.shape[1] > 1), None)
    if probs is None:
        raw = result.outputs[0][1]
        return [{"output": row} for row in raw.tolist()]
    classes: list[Any] = list(spec.class_labels) if spec is not None else []
    classes = classes or list(meta.labels) or [str(j) for j in range(probs.shape[1])]
    names = [str(c) for c in classes]
    labels = _labels(meta, result, probs, spec is not None and bool(spec.class_labels))
    if labels is None:
        labels = [classes[j] for j in probs.argmax(axis=1).tolist()]
    return [{"label": label, "probabilities": dict(zip(names, row, strict=False))}
            for label, row in zip(labels, probs.astype(float).tolist(), strict=True)]


def answer_bytes(outputs: list[tuple[str, np.ndarray]]) -> int:
    """About what ``outputs`` take in an answer: a numeric tensor's raw bytes, a BYTES
    element's UTF-8 length and its 4-byte length prefix, a little per tensor."""
    total = 0
    for name, arr in outputs:
        total += len(name) + 16 * (arr.ndim + 1)
        if arr.dtype.kind in "OSU":
            total += 4 * arr.size + sum(
                len(x if isinstance(x, bytes) else str(x).encode()) for x in arr.ravel().tolist())
        else:
            total += arr.nbytes
    return total


def _fits(outputs: list[tuple[str, np.ndarray]], limit: int | None) -> None:
    if limit is not None and (size := answer_bytes(outputs)) > limit:
        raise errors.ResultTooLarge(f"the answer would take about {size} bytes, over the "
                                    f"{limit} this face can send; ask for fewer rows, "
                                    f"outputs or classes")


def _labels(meta: ModelMeta, result: InferResult, probs: np.ndarray,
            zipmap: bool) -> list[Any] | None:
    """The label output's values, one per row (see :func:`classify`), or None."""
    if meta.label_output:
        arr = result.output(meta.label_output)
    elif zipmap:
        arr = next((a for _, a in result.outputs if a is not probs and a.dtype.kind in "iuO"
                    and a.shape[:1] == probs.shape[:1] and a.size == probs.shape[0]), None)
    else:
        return None
    return None if arr is None else arr.reshape(-1).tolist()
