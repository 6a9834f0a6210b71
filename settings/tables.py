"""Typed TOML tables declared like the settings: one dataclass, one :func:`~settings.schema.key` per key.

Usage::

    @dataclass(frozen=True)
    class CacheConfig:
        enabled: bool = key(True, "Cache this model's answers.")
        ttl_s: int = key(300, "Seconds an answer stays cached.", min=1, max=30 * 86400)

    config = parse_table(CacheConfig, {"ttl_s": 60}, "models/digits/config.toml", "cache.")
    for item in describe(CacheConfig, "cache."): print(item.name, item.doc)

The per-model ``config.toml`` (:mod:`daemon.repository`) is read this way, so it has the
same mechanism as ``falcon.toml``: typed keys with a description and bounds, errors that
name the file and the key (``batching.max_batch_size must be int, got true``), and
``falconctl config --describe`` lists its keys. A field whose type is a dataclass is a
sub-table (``[batching]``); a field declared without :func:`key` (no ``doc``) is not a
key of the file. A key of type ``tuple[str, ...]`` takes a list of strings.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from settings.schema import ConfigError, deprecated, doc_of

T = TypeVar("T")


@dataclass(frozen=True)
class TableKey:
    """One declared key, for ``falconctl config --describe``."""

    name: str  # with its table's prefix: "batching.max_batch_size"
    type: str
    default: Any
    doc: str


def parse_table(cls: type[T], data: Any, where: str, prefix: str = "",
                extra: dict[str, Any] | None = None) -> T:
    """``cls`` from the TOML table ``data``; raises :class:`ConfigError` naming ``where``
    (the file) and the key. Unknown keys are refused, except sub-tables when ``extra``
    is given: those are collected there (sections for other tools)."""
    if not isinstance(data, Mapping):
        name = prefix.rstrip(".")
        raise ConfigError(f"{where}: {name} must be a table ([{name}]), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if "doc" in f.metadata}
    values: dict[str, Any] = {}
    data = _renamed(data, fields, where, prefix)
    for name, value in data.items():
        f = fields.get(name)
        if f is None:
            if extra is not None and isinstance(value, Mapping):
                extra[name] = dict(value)
                continue
            raise ConfigError(f"{where}: unknown key '{prefix}{name}' "
                              f"(known: {', '.join(prefix + k for k in fields)})")
        typ = _plain(hints[name])
        if dataclasses.is_dataclass(typ):
            values[name] = parse_table(typ, value, where, f"{prefix}{name}.")  # type: ignore[arg-type]
        else:
            values[name] = _value(value, typ, f.metadata, where, prefix + name)
    return cls(**values)


def describe(cls: type, prefix: str = "") -> list[TableKey]:
    """Every key of ``cls``, sub-tables' included, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "doc" not in f.metadata:
            continue
        typ = _plain(hints[f.name])
        if dataclasses.is_dataclass(typ):
            out += describe(typ, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append(TableKey(prefix + f.name, _type_name(typ), default, doc_of(f)))
    return out


def _renamed(data: Mapping[str, Any], fields: Mapping[str, Any], where: str,
             prefix: str) -> Mapping[str, Any]:
    """``data`` with keys given under their old names (``key(formerly=)``) renamed;
    old and new name both given is a ConfigError."""
    for name, f in fields.items():
        old = f.metadata.get("formerly")
        if not old or old not in data:
            continue
        if name in data:
            raise ConfigError(f"{where}: {prefix}{old} and {prefix}{name} are the same key (the "
                              f"first is its old name): keep {prefix}{name}")
        deprecated(where, prefix + old, prefix + name)
        data = {(name if k == old else k): v for k, v in data.items()}
    return data


def _plain(typ: Any) -> Any:
    """``X | None`` -> ``X`` (TOML has no null: None is only ever a default)."""
    if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return typ


def _type_name(typ: Any) -> str:
    return "list of strings" if typing.get_origin(typ) is tuple else typ.__name__


def _value(value: Any, typ: Any, meta: Mapping[str, Any], where: str, name: str) -> Any:
    if typing.get_origin(typ) is tuple:
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{where}: {name} must be a list of strings, got {value!r}")
        return tuple(value)
    ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise ConfigError(f"{where}: {name} must be {typ.__name__}, got {value!r}")
    low, high = meta.get("min"), meta.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"between {low} and {high}" if low is not None and high is not None
                  else f">= {low}" if low is not None else f"<= {high}")
        raise ConfigError(f"{where}: {name} must be {bounds}, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{where}: {name} must be one of {', '.join(meta['choices'])}, "
                          f"got {value!r}")
    return value
