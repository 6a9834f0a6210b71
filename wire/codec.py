"""The one encoder and decoder of :mod:`wire.ops`' messages, driven by their fields.

How to use it: a message is a frozen dataclass deriving from :class:`Message`; each
field's annotation (one of :data:`_CODECS`' keys, checked when the class is first
coded) picks how it is checked and encoded, so the class is its schema::

    @dataclass(frozen=True, slots=True, kw_only=True)
    class LoadAnswer(Message):
        model: str
        loaded: list[str]

    LoadAnswer(model="m", loaded=["1"]).to_wire()      # {"model": "m", "loaded": ["1"]}
    LoadAnswer.from_wire({"model": 3, "loaded": []})   # MessageError, field "model"

The keys are the fields' names, in their order. A field without a default is
required; an optional one travels as nil when unset, except those the class lists
in ``OMIT_NONE`` (sent only when set). Keys a class does not know are ignored (a
newer peer may send more). A list of nested messages is an annotation registered
with :func:`register_entries`. Tensors travel as :mod:`wire.messages` maps inside a
:class:`Tensors`, which decodes them when asked (:meth:`Tensors.arrays`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Self

import numpy as np

from wire.messages import MessageError, decode_tensors, encode_tensor


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
            raise MessageError(f"expected a list of tensors, got {kind_of(obj)}", where)
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
            raise MessageError(f"expected {expected}, got {kind_of(obj)}", where)
        return obj
    return decode


def _of(kind: type, expected: str, optional: bool = False) -> Decode:
    """PERF: an exact-type check in one call (ops are decoded on every request)."""
    def decode(obj: Any, where: str) -> Any:
        if type(obj) is kind or (optional and obj is None):
            return obj
        raise MessageError(f"expected {expected}, got {kind_of(obj)}", where)
    return decode


def kind_of(obj: Any) -> str:
    """How an error names what it got instead: ``nil``, ``int``, ``list``..."""
    return "nil" if obj is None else type(obj).__name__


def _is_int(obj: Any) -> bool:
    return type(obj) is int


def _optional(decode: Decode) -> Decode:
    return lambda obj, where: None if obj is None else decode(obj, where)


def _weights(obj: Any, where: str) -> dict[str, int]:
    if not isinstance(obj, dict):
        raise MessageError("expected a map of version -> weight, e.g. {\"1\": 90, \"2\": 10}, "
                           f"got {kind_of(obj)}", where)
    for version, weight in obj.items():
        if not isinstance(version, str) or not _is_int(weight):
            raise MessageError(f"weight of version {version!r} must be an integer, "
                               f"got {weight!r}", where)
    return obj


def _entries(cls: type[Message]) -> Decode:
    def decode(obj: Any, where: str) -> list[Any]:
        if not isinstance(obj, list):
            raise MessageError(f"expected a list, got {kind_of(obj)}", where)
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


# one field's coders: (name, decode, encode or None for plain data, required, omit_none);
# PERF: plain tuples, unpacked in the loops (ops are coded on every request)
_Field = tuple[str, Decode, Encode | None, bool, bool]
_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _codec(cls: type[Message]) -> tuple[_Field, ...]:
    """``cls``'s fields with their coders, built once per class."""
    spec = _FIELDS.get(cls)
    if spec is None:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        coders = [_CODECS[str(f.type)] for f in fields]
        spec = _FIELDS[cls] = tuple(
            (f.name, decode, None if encode is _SAME else encode,
             f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
             f.name in cls.OMIT_NONE)
            for f, (decode, encode) in zip(fields, coders, strict=True))
    return spec


class Message:
    """A request op, an answer, or an entry of one: encoded and decoded by :func:`_codec`."""

    __slots__ = ()
    OMIT_NONE: ClassVar[tuple[str, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, _, encode, _, omit_none in _codec(type(self)):
            value = getattr(self, name)
            if value is None:
                if not omit_none:
                    out[name] = None
            else:
                out[name] = value if encode is None else encode(value)
        return out

    @classmethod
    def from_wire(cls, obj: Any, where: str = "") -> Self:
        """``cls`` from its wire map; ``where`` prefixes the field names in errors."""
        if not isinstance(obj, dict):
            raise MessageError(f"expected a map, got {kind_of(obj)}", where.rstrip(".") or None)
        args: dict[str, Any] = {}
        for name, decode, _, required, _ in _codec(cls):
            if name in obj:
                args[name] = decode(obj[name], where + name if where else name)
            elif required:
                raise MessageError("missing", where + name)
        return cls(**args)


def register_entries(cls: type[Message]) -> None:
    """Let fields be annotated ``list[<cls name>]``: a list of ``cls`` messages, each
    decoded naming its place (``result.models[2].split``)."""
    _CODECS[f"list[{cls.__name__}]"] = (_entries(cls),
                                        lambda value: [e.to_wire() for e in value])


def check(*classes: type[Message]) -> None:
    """Build the coders of ``classes`` now: a field whose annotation has no codec
    raises ``KeyError`` at import rather than on the first message."""
    for cls in classes:
        _codec(cls)
