"""The ops of the edge <-> daemon protocol as classes: one per request, one per answer.

How to use it. The sender builds a request and encodes it; the receiver decodes
it into the same class and answers with the op's answer class::

    req = ops.Request(id=7, op=ops.Metadata(model="digits"), deadline_ms=2000)
    frames.encode(frames.REQUEST, req.to_wire())            # the edge
    req = ops.Request.from_wire(payload)                    # the daemon
    ops.Response(req.id, answer=ops.MetadataAnswer(...)).to_wire()
    ops.Response.from_wire(payload, type(req.op).ANSWER)    # the edge again

Every message is a frozen dataclass; :func:`_codec` is the one encoder and decoder
of their fields, driven by each field's annotation, so a class is its schema. A
decode checks every field's type and the required ones' presence and raises
:class:`~wire.messages.MessageError` naming the field (``model``, ``models[2].split``);
keys it does not know are ignored (a newer peer may send more). An op name not in
:data:`OPS` is :class:`UnknownOp` (the daemon answers ``ProtocolError``).

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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np

from wire.messages import MessageError, RemoteError, decode_tensors, encode_tensor


class UnknownOp(MessageError):
    """The request's ``op`` is not one of :data:`OPS`."""


class Tensors:
    """Named tensors: built from arrays by the sender (:meth:`of`) or from their wire
    maps by the receiver (:meth:`from_wire`); each form is made from the other once,
    when asked. Equal when their wire maps are."""

    __slots__ = ("_arrays", "_wire", "where")

    def __init__(self, arrays: list[tuple[str, np.ndarray]] | None,
                 wire: list[Any] | None, where: str) -> None:
        self._arrays, self._wire, self.where = arrays, wire, where

    @classmethod
    def of(cls, arrays: list[tuple[str, np.ndarray]]) -> Tensors:
        return cls(list(arrays), None, "tensors")

    @classmethod
    def from_wire(cls, obj: Any, where: str) -> Tensors:
        if not isinstance(obj, list):
            raise MessageError(f"expected a list of tensors, got {_kind(obj)}", where)
        return cls(None, obj, where)

    def arrays(self) -> list[tuple[str, np.ndarray]]:
        """``(name, array)`` pairs; raises :class:`MessageError` naming the tensor
        (``inputs[0].data``) if a wire map is malformed."""
        if self._arrays is None:
            self._arrays = decode_tensors(self._wire, self.where)
        return self._arrays

    def to_wire(self) -> list[dict[str, Any]]:
        """The wire maps; raises :class:`MessageError` for a dtype that cannot travel."""
        if self._wire is None:
            self._wire = [encode_tensor(n, a) for n, a in self._arrays or ()]
        return self._wire

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tensors) and self.to_wire() == other.to_wire()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self._arrays is None:
            return f"Tensors(<{len(self._wire or ())} wire maps>)"
        return f"Tensors({[(n, a.dtype.str, a.shape) for n, a in self._arrays]})"


# -- the one encoder and decoder -------------------------------------------------------

Decode = Callable[[Any, str], Any]
Encode = Callable[[Any], Any]


def _check(ok: Callable[[Any], bool], expected: str) -> Decode:
    def decode(obj: Any, where: str) -> Any:
        if not ok(obj):
            raise MessageError(f"expected {expected}, got {_kind(obj)}", where)
        return obj
    return decode


def _of(kind: type, expected: str, optional: bool = False) -> Decode:
    """PERF: an exact-type check in one call (ops are decoded on every request)."""
    def decode(obj: Any, where: str) -> Any:
        if type(obj) is kind or (optional and obj is None):
            return obj
        raise MessageError(f"expected {expected}, got {_kind(obj)}", where)
    return decode


def _kind(obj: Any) -> str:
    return "nil" if obj is None else type(obj).__name__


def _is_int(obj: Any) -> bool:
    return type(obj) is int


def _optional(decode: Decode) -> Decode:
    return lambda obj, where: None if obj is None else decode(obj, where)


def _weights(obj: Any, where: str) -> dict[str, int]:
    if not isinstance(obj, dict):
        raise MessageError("expected a map of version -> weight, e.g. {\"1\": 90, \"2\": 10}, "
                           f"got {_kind(obj)}", where)
    for version, weight in obj.items():
        if not isinstance(version, str) or not _is_int(weight):
            raise MessageError(f"weight of version {version!r} must be an integer, "
                               f"got {weight!r}", where)
    return obj


def _entries(cls: type[Message]) -> Decode:
    def decode(obj: Any, where: str) -> list[Any]:
        if not isinstance(obj, list):
            raise MessageError(f"expected a list, got {_kind(obj)}", where)
        return [cls.from_wire(e, f"{where}[{i}].") for i, e in enumerate(obj)]
    return decode


_STR_LIST = _check(lambda o: isinstance(o, list) and all(isinstance(s, str) for s in o),
                   "a list of strings")
_MAP = _check(lambda o: isinstance(o, dict), "a map")
_MAPS = _check(lambda o: isinstance(o, list) and all(isinstance(m, dict) for m in o),
               "a list of maps")
_SAME: Encode = lambda value: value  # noqa: E731 (plain data travels as it is)

# annotation -> (decode, encode); a message class may use these annotations only
_CODECS: dict[str, tuple[Decode, Encode]] = {
    "str": (_of(str, "a string"), _SAME),
    "str | None": (_of(str, "a string", optional=True), _SAME),
    "int": (_of(int, "an integer"), _SAME),
    "int | None": (_of(int, "an integer", optional=True), _SAME),
    "bool": (_of(bool, "a boolean"), _SAME),
    "list[str]": (_STR_LIST, _SAME),
    "list[str] | None": (_optional(_STR_LIST), _SAME),
    "dict[str, int]": (_weights, _SAME),
    "dict[str, Any]": (_MAP, _SAME),
    "list[dict[str, Any]]": (_MAPS, _SAME),
    "Tensors": (Tensors.from_wire, lambda value: value.to_wire()),
}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    decode: Decode
    encode: Encode
    required: bool
    omit_none: bool


_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _codec(cls: type[Message]) -> tuple[_Field, ...]:
    """``cls``'s fields with their coders, built once per class."""
    spec = _FIELDS.get(cls)
    if spec is None:
        spec = _FIELDS[cls] = tuple(
            _Field(f.name, *_CODECS[str(f.type)],
                   required=f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING,
                   omit_none=f.name in cls.OMIT_NONE)
            for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    return spec


class Message:
    """A request op, an answer, or an entry of one: encoded and decoded by :func:`_codec`."""

    __slots__ = ()
    OMIT_NONE: ClassVar[tuple[str, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in _codec(type(self)):
            value = getattr(self, f.name)
            if value is None:
                if not f.omit_none:
                    out[f.name] = None
            else:
                out[f.name] = f.encode(value)
        return out

    @classmethod
    def from_wire(cls, obj: Any, where: str = "") -> Self:
        """``cls`` from its wire map; ``where`` prefixes the field names in errors."""
        if not isinstance(obj, dict):
            raise MessageError(f"expected a map, got {_kind(obj)}", where.rstrip(".") or None)
        args: dict[str, Any] = {}
        for f in _codec(cls):
            if f.name in obj:
                args[f.name] = f.decode(obj[f.name], where + f.name)
            elif f.required:
                raise MessageError("missing", where + f.name)
        return cls(**args)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelsAnswer(Answer):
    models: list[ModelEntry]


@dataclass(frozen=True, slots=True, kw_only=True)
class MetadataAnswer(Answer):
    """A loaded version (daemon/loader.py ``metadata``): ``inputs``/``outputs`` are
    ``{name, dtype, shape, class_labels?}``, ``config`` the model's config
    (daemon/repository.py), ``batching`` its batching policy (daemon/batcher.py)."""
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


_CODECS["list[ModelEntry]"] = (_entries(ModelEntry), lambda value: [e.to_wire() for e in value])
_CODECS["list[IndexEntry]"] = (_entries(IndexEntry), lambda value: [e.to_wire() for e in value])
ANSWERS = tuple(op.ANSWER for op in OPS.values())
for _cls in (*OPS.values(), *ANSWERS, ModelEntry, IndexEntry):
    _codec(_cls)  # NOTE: at import: a field whose annotation has no codec fails here


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
            raise MessageError(f"expected an integer, got {_kind(rid)}", "id")
        if budget is not None and not _is_int(budget):
            raise MessageError(f"expected an integer (milliseconds), got {_kind(budget)}",
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
