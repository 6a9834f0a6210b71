"""The ops of the edge <-> daemon protocol as classes: one per request, one per answer.

How to use it. The sender builds a request and encodes it; the receiver decodes
it into the same class and answers with the op's answer class::

    req = ops.Request(id=7, op=ops.Metadata(model="digits"), deadline_ms=2000)
    frames.encode(frames.REQUEST, req.to_wire())            # the edge
    req = ops.Request.from_wire(payload)                    # the daemon
    ops.Response(req.id, answer=ops.MetadataAnswer(...)).to_wire()
    ops.Response.from_wire(payload, type(req.op).ANSWER)    # the edge again

Every message is a frozen dataclass, encoded and decoded by :mod:`wire.codec`
from its fields' annotations, so a class is its schema. A decode checks every
field's type and the required ones' presence and raises
:class:`~wire.messages.MessageError` naming the field (``model``,
``result.models[2].split``). An op name not in :data:`OPS` is :class:`UnknownOp`
(the daemon answers ``ProtocolError``).

On the wire a request is one flat map, ``{"id", "op", "deadline_ms"?, ...its
fields}``, and an answer is the ``result`` of ``{"id", "ok": true, "result"}``, or
``{"id", "ok": false, "error"}`` with the error data of :mod:`wire.messages`
(:class:`~wire.messages.RemoteError`). The keys are the fields' names, in their
order; an optional field travels as nil when unset, except those a class lists in
``OMIT_NONE`` (sent only when set: older peers and tests/data/wire never sent them).

Tensors travel as :mod:`wire.messages` maps inside a :class:`Tensors`, which
decodes them when asked (:meth:`Tensors.arrays`): the daemon admits a request
before paying for its inputs, and a malformed tensor counts as a failure of the
version it was sent to. The ops and their answers:

==========  =====================================  ===============================
op          request fields                         answer fields
==========  =====================================  ===============================
ping        --                                     ready, draining, models, peer?
models      --                                     models: [ModelEntry]
metadata    model, version?                        name, version, platform, inputs,
                                                   outputs, config, weight_bytes,
                                                   content_digest, batching
infer       model, version?, inputs, outputs?,     model, version, outputs,
            trace? (see Infer)                     queue_us, compute_us, batch_rows?
index       --                                     models: [IndexEntry]
load        model, version?                        model, loaded: [str]
unload      model, version?                        model, unloaded: [str]
split       model, split: {version: weight}        model, old, new (splits)
rollback    model                                  model, old, new
stats       model?, version?                       model_stats (see daemon/stats.py)
==========  =====================================  ===============================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from wire.codec import Message, Tensors, check, kind_of, register_entries  # (ops.Tensors too)
from wire.messages import MessageError, RemoteError


class UnknownOp(MessageError):
    """The request's ``op`` is not one of :data:`OPS`."""

class Answer(Message):
    __slots__ = ()


A = TypeVar("A", bound=Answer, covariant=True)  # an Op[SplitAnswer] is an Op[Answer]


class Op(Message, Generic[A]):
    """A request's op, ``Op[its answer's class]``; ``OP`` is its name on the wire,
    ``ANSWER`` its answer's class, ``IDEMPOTENT`` whether it may be sent again when the
    first copy's fate is unknown (a management change is not: a rollback sent twice
    goes back two steps)."""

    __slots__ = ()
    OP: ClassVar[str]
    ANSWER: ClassVar[type[Answer]]
    IDEMPOTENT: ClassVar[bool] = True


def _op(name: str, answer: type[Answer], idempotent: bool = True) -> Callable[[type], Any]:
    def register(cls: type[Op[Any]]) -> type[Op[Any]]:
        cls.OP, cls.ANSWER, cls.IDEMPOTENT = name, answer, idempotent
        OPS[name] = cls
        return cls
    return register


OPS: dict[str, type[Op[Any]]] = {}  # op name -> class, filled by @_op below

# -- answers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PingAnswer(Answer):
    """``peer``: who the daemon sees on this connection (``user (uid N, pid P)``)."""
    OMIT_NONE = ("peer",)
    ready: bool
    draining: bool
    models: int
    peer: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelEntry(Message):
    """A loaded model: its loaded versions, the version that answers without a split,
    and the traffic split (version -> weight; empty: none)."""
    name: str
    versions: list[str]
    default_version: str
    split: dict[str, int] = field(default_factory=dict)


register_entries(ModelEntry)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelsAnswer(Answer):
    models: list[ModelEntry]


@dataclass(frozen=True, slots=True, kw_only=True)
class MetadataAnswer(Answer):
    """A loaded version (daemon/loader.py ``metadata``): ``inputs``/``outputs`` are
    ``{name, dtype, shape, class_labels?}``, ``config`` the model's config
    (daemon/repository.py), ``batching`` its batching policy (daemon/batcher.py) with
    ``instances``, the runs of the version that can happen at once (daemon/server.py)."""
    name: str
    version: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    platform: str = "onnxruntime_onnx"
    config: dict[str, Any] = field(default_factory=dict)
    weight_bytes: int = 0
    content_digest: str = ""  # the version's SHA-256: the edge's cache key (edge/cache.py)
    batching: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class InferAnswer(Answer):
    """``queue_us``: from the batcher to the start of the run; ``compute_us``: the run;
    ``batch_rows``: rows in that run."""
    OMIT_NONE = ("batch_rows",)
    model: str
    version: str
    outputs: Tensors
    queue_us: int = 0
    compute_us: int = 0
    batch_rows: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexEntry(Message):
    """A version in the repository: ``state`` READY or UNAVAILABLE, ``reason`` why."""
    name: str
    version: str
    state: str
    reason: str = ""


register_entries(IndexEntry)


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexAnswer(Answer):
    models: list[IndexEntry]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadAnswer(Answer):
    model: str
    loaded: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class UnloadAnswer(Answer):
    model: str
    unloaded: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitAnswer(Answer):
    """The split before and after the change (version -> weight)."""
    model: str
    old: dict[str, int]
    new: dict[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackAnswer(SplitAnswer):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsAnswer(Answer):
    """Per loaded version, Triton's statistics names (see daemon/stats.py)."""
    model_stats: list[dict[str, Any]]


# -- requests --------------------------------------------------------------------------


@_op("ping", PingAnswer)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Op[PingAnswer]):
    pass


@_op("models", ModelsAnswer)
@dataclass(frozen=True, slots=True, kw_only=True)
class Models(Op[ModelsAnswer]):
    pass


@_op("metadata", MetadataAnswer)
@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata(Op[MetadataAnswer]):
    """``version`` None or empty: the model's default version."""
    model: str
    version: str | None = None


@_op("infer", InferAnswer)
@dataclass(frozen=True, slots=True, kw_only=True)
class Infer(Op[InferAnswer]):
    """``outputs`` None: every output. ``trace``: the W3C ``traceparent`` of the edge's
    daemon-call span (the daemon's spans join that trace when its flags say sampled),
    or a bare 32-hex trace id (older edges, tracing off: logged with failures only);
    parsed by ``telemetry.w3c.parse_frame_trace``, never here."""
    OMIT_NONE = ("trace",)
    model: str
    version: str | None = None
    inputs: Tensors
    outputs: list[str] | None = None
    trace: str | None = None


@_op("index", IndexAnswer)
@dataclass(frozen=True, slots=True, kw_only=True)
class Index(Op[IndexAnswer]):
    pass


@_op("load", LoadAnswer, idempotent=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class Load(Op[LoadAnswer]):
    """``version`` None: every version of the model in the repository."""
    model: str
    version: str | None = None


@_op("unload", UnloadAnswer, idempotent=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class Unload(Op[UnloadAnswer]):
    model: str
    version: str | None = None


@_op("split", SplitAnswer, idempotent=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class Split(Op[SplitAnswer]):
    model: str
    split: dict[str, int]


@_op("rollback", RollbackAnswer, idempotent=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class Rollback(Op[RollbackAnswer]):
    model: str


@_op("stats", StatsAnswer)
@dataclass(frozen=True, slots=True, kw_only=True)
class Stats(Op[StatsAnswer]):
    """``model`` None: every loaded version; ``version`` None: every version of ``model``."""
    model: str | None = None
    version: str | None = None


ANSWERS = tuple(op.ANSWER for op in OPS.values())
check(*OPS.values(), *ANSWERS, ModelEntry, IndexEntry)


# -- envelopes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One request frame's payload: ``id`` chosen by the client (unique among its
    requests in flight), ``deadline_ms`` the time left when sent (the daemon drops an
    infer it cannot start in time; required for infer)."""

    id: int
    op: Op[Any]
    deadline_ms: int | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "op": self.op.OP}
        if self.deadline_ms is not None:
            out["deadline_ms"] = self.deadline_ms
        out.update(self.op.to_wire())
        return out

    @staticmethod
    def from_wire(payload: dict[str, Any]) -> Request:
        """Raises :class:`UnknownOp`, or :class:`MessageError` naming the field."""
        rid, name, budget = payload.get("id"), payload.get("op"), payload.get("deadline_ms")
        cls = OPS.get(name) if isinstance(name, str) else None
        if cls is None:
            raise UnknownOp(f"unknown op {name!r} (known: {', '.join(OPS)})", "op")
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise MessageError(f"expected an integer, got {kind_of(rid)}", "id")
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool)):
            raise MessageError(f"expected an integer (milliseconds), got {kind_of(budget)}",
                               "deadline_ms")
        return Request(rid, cls.from_wire(payload), budget)


@dataclass(frozen=True, slots=True)
class Response:
    """One response frame's payload: the ``answer`` to request ``id``, or its ``error``."""

    id: Any
    answer: Answer | None = None
    error: RemoteError | None = None

    def to_wire(self) -> dict[str, Any]:
        if self.error is not None:
            return {"id": self.id, "ok": False, "error": self.error.to_wire()}
        assert self.answer is not None, "a Response holds an answer or an error"
        return {"id": self.id, "ok": True, "result": self.answer.to_wire()}

    @staticmethod
    def from_wire(payload: dict[str, Any], answer: type[Answer]) -> Response:
        """``answer``: the class the request's op answers with (``type(op).ANSWER``).
        An error answer is never malformed (:meth:`RemoteError.from_wire`); a result
        that is raises :class:`MessageError` naming the field (``result.models``)."""
        if payload.get("ok") is True:
            return Response(payload.get("id"), answer.from_wire(payload.get("result"), "result."))
        return Response(payload.get("id"), error=RemoteError.from_wire(payload.get("error")))
