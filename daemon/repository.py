"""The model repository on disk.

Layout::

    <repo>/
      <model>/
        config.toml          # per-model configuration (ModelConfig)
        <version>/           # a positive integer
          model.onnx

A model directory without ``config.toml`` gets the defaults. A version
directory without ``model.onnx`` is skipped with a warning (a copy may be in
progress). Names are restricted to ``[A-Za-z0-9_.-]`` so they are safe in
segment names, URLs and metric labels.
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.toml"


class RepositoryError(Exception):
    """The repository or a model's config is malformed; the message names the
    file and the key."""


# The [batching] section's defaults (see BatchingConfig and bench/daemon_batching.py).
DEFAULT_QUEUE_DELAY_US = 0
DEFAULT_CONCURRENT_BATCHES = 1
DEFAULT_QUEUE_BATCHES = 8  # max_queue_rows defaults to this many full batches
MAX_QUEUE_DELAY_US = 1_000_000


@dataclass(frozen=True)
class BatchingConfig:
    """The ``[batching]`` section: dynamic batching of one model's versions
    (:mod:`daemon.batcher`). ``None`` means "derived from the model".

    ``enabled``: coalesce concurrent requests into one run. Default: on when
    the first dimension of every input and output is dynamic (a batch
    dimension), off otherwise; ``true`` on a model without a batch dimension
    is logged and ignored. Batching assumes rows are independent: set it to
    ``false`` for a model whose output for one row depends on other rows.
    ``max_batch_size``: rows per run (default: the model's ``max_batch_size``);
    a single request with more rows runs alone.
    ``max_queue_delay_us``: how long the first request of a batch waits for
    others; a batch also runs as soon as it is full. Default 0: no waiting,
    batches form from the requests that queue while the previous batch runs.
    ``max_concurrent_batches``: batches of one version running at once (default
    1: ONNX Runtime's intra-op threads already spread one run over the cores;
    the daemon's other inference threads serve other versions).
    ``max_queue_rows``: rows waiting (not yet running) beyond which a request
    is refused ``Overloaded`` at once (default 8 full batches).
    ``exact``: a row's answer never depends on what it ran with (default
    ``true``): a one-row request that runs alone runs as two copies of its row,
    because ONNX Runtime rounds a single row differently (see
    :mod:`daemon.batcher`). ``false`` saves that second row: free for small
    models and for ``prepack = true``, but a big MatMul model without
    prepacking runs a lone row up to 2x faster (the bench's heavy model: 9 against
    17 ms), and its answer may then differ in the last bits from the one the same
    row gets in a batch, from a cached answer, and from the audit row of a request
    HAProxy re-sent after a worker died.

    NOTE: the defaults come from ``bench/daemon_batching.py`` on 2 cores: a
    delay costs a lone request at least 1 ms (asyncio's epoll timer rounds up to
    whole milliseconds) and bought no throughput once only one batch of a
    version runs at a time; two batches of the same version at once fought for
    the cores and ran fewer rows per run.
    """

    enabled: bool | None = None
    max_batch_size: int | None = None
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    max_queue_rows: int | None = None
    max_concurrent_batches: int = DEFAULT_CONCURRENT_BATCHES
    exact: bool = True


@dataclass(frozen=True)
class CacheConfig:
    """The ``[cache]`` section, read by the edge: whether answers of this model
    are cached in Memcached, and for how long. On by default; a model whose
    inference is cheaper than a cache round trip (the digits demo: measured in
    README) turns it off."""

    enabled: bool = True
    ttl_s: int = 300


_CACHE: dict[str, tuple[type, int, int]] = {"enabled": (bool, 0, 0), "ttl_s": (int, 1, 30 * 86400)}


@dataclass(frozen=True)
class ModelConfig:
    """Per-model settings from ``<repo>/<model>/config.toml``."""

    max_batch_size: int = 256
    prepack: bool = False
    intra_op_threads: int = 0
    labels: tuple[str, ...] = ()
    label_output: str = ""
    probabilities_output: str = ""
    description: str = ""
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    cache: CacheConfig = field(default_factory=lambda: CacheConfig())
    extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_batch_size, "labels": list(self.labels),
                "label_output": self.label_output,
                "probabilities_output": self.probabilities_output,
                "description": self.description, "prepack": self.prepack,
                "cache": {"enabled": self.cache.enabled, "ttl_s": self.cache.ttl_s}}


_TYPES: dict[str, type | tuple[type, ...]] = {
    "max_batch_size": int, "prepack": bool, "intra_op_threads": int, "labels": list,
    "label_output": str, "probabilities_output": str, "description": str,
}
# [batching] keys: type, smallest and largest value (ints only)
_BATCHING: dict[str, tuple[type, int, int]] = {
    "enabled": (bool, 0, 0), "max_batch_size": (int, 1, 1 << 20),
    "max_queue_delay_us": (int, 0, MAX_QUEUE_DELAY_US), "max_queue_rows": (int, 1, 1 << 24),
    "max_concurrent_batches": (int, 1, 64), "exact": (bool, 0, 0),
}


def parse_config(path: Path) -> ModelConfig:
    """Read and validate one model config; raises :class:`RepositoryError`."""
    if not path.exists():
        return ModelConfig()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: {exc}") from None
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        typ = _TYPES.get(key)
        if key == "batching":
            values[key] = parse_batching(path, value)
            continue
        if key == "cache":
            values[key] = CacheConfig(**_section(path, key, value, _CACHE))
            continue
        if typ is None:
            if isinstance(value, dict):  # sections for other subsystems (evaluation...)
                extra[key] = value
                continue
            raise RepositoryError(f"{path}: unknown key {key!r}")
        _check_type(path, key, value, typ)
        values[key] = value
    if values.get("max_batch_size", 1) < 1:
        raise RepositoryError(f"{path}: max_batch_size must be >= 1")
    if "labels" in values:
        if not all(isinstance(x, str) for x in values["labels"]):
            raise RepositoryError(f"{path}: labels must be a list of strings")
        values["labels"] = tuple(values["labels"])
    return ModelConfig(extra=extra, **values)


def parse_batching(path: Path, section: Any) -> BatchingConfig:
    """Validate the ``[batching]`` table; raises :class:`RepositoryError`
    naming the file and the key (``batching.<key>``)."""
    return BatchingConfig(**_section(path, "batching", section, _BATCHING))


def _section(path: Path, name: str, section: Any,
             spec: dict[str, tuple[type, int, int]]) -> dict[str, Any]:
    """Validate a ``[name]`` table against ``spec`` (key -> type, min, max)."""
    if not isinstance(section, dict):
        raise RepositoryError(f"{path}: {name} must be a table ([{name}]), got {section!r}")
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in spec:
            raise RepositoryError(f"{path}: unknown key '{name}.{key}' "
                                  f"(known: {', '.join(spec)})")
        typ, low, high = spec[key]
        _check_type(path, f"{name}.{key}", value, typ)
        if typ is int and not low <= value <= high:
            raise RepositoryError(f"{path}: {name}.{key} must be between {low} and {high}, "
                                  f"got {value}")
        values[key] = value
    return values


def _check_type(path: Path, key: str, value: Any, typ: type | tuple[type, ...]) -> None:
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise RepositoryError(f"{path}: {key} must be {_name(typ)}, got {value!r}")


def _name(typ: type | tuple[type, ...]) -> str:
    return typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)


@dataclass(frozen=True)
class VersionEntry:
    model: str
    version: str
    path: Path
    config: ModelConfig


def scan(repo: Path) -> list[VersionEntry]:
    """Every loadable ``(model, version)`` in the repository, sorted.

    Raises :class:`RepositoryError` if the repository is missing or a config is
    malformed; a bad model name is skipped with a warning.
    """
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} is not a directory")
    entries = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        if not NAME_RE.match(model_dir.name):
            log.warning("skipping %s: not a valid model name", model_dir)
            continue
        config = parse_config(model_dir / CONFIG_FILE)
        for vdir in sorted((p for p in model_dir.iterdir() if p.is_dir()), key=_version_key):
            if not vdir.name.isdigit() or int(vdir.name) < 1:
                continue
            if not (vdir / MODEL_FILE).is_file():
                log.warning("skipping %s: no %s", vdir, MODEL_FILE)
                continue
            entries.append(VersionEntry(model_dir.name, str(int(vdir.name)), vdir / MODEL_FILE,
                                        config))
    return entries


def _version_key(p: Path) -> tuple[int, str]:
    return (int(p.name), "") if p.name.isdigit() else (0, p.name)
