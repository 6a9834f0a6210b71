"""The model registry: name -> versions -> loaded sessions.

The registry owns every :class:`~daemon.loader.LoadedVersion`. Lookups are
lock-free reads of an immutable snapshot (a dict replaced as a whole on every
change), so the serving path never waits on a load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from daemon import loader, metrics
from daemon.loader import LoadedVersion
from daemon.repository import VersionEntry
from daemon.tensortypes import TensorSpec

log = logging.getLogger(__name__)


class RegistryError(Exception):
    """Root of the registry's errors."""


class NotFound(RegistryError):
    """No such model, or no such version of it, is loaded."""


class InvalidFeeds(RegistryError):
    """The tensors sent do not fit the model's inputs (names, dtype, rank,
    fixed dimensions, batch bound). ``field`` names the tensor, ``reason`` says
    what is wrong with it; they travel apart (error data's ``field``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


Loader = Callable[[VersionEntry], LoadedVersion]


class Registry:
    """Loaded model versions. ``load_all`` never raises for one bad version:
    it logs it and serves the others (``failures`` lists them)."""

    def __init__(self, load: Loader) -> None:
        self._load = load
        self._models: dict[str, dict[str, LoadedVersion]] = {}
        self._lock = threading.Lock()
        self.failures: dict[str, str] = {}

    @classmethod
    def from_settings(cls, prefix: str, run_dir: str, intra_op_threads: int) -> Registry:
        placeholder = loader.placeholder_dir_for(run_dir)

        def load(entry: VersionEntry) -> LoadedVersion:
            return loader.load(entry, prefix=prefix, placeholder_dir=placeholder,
                               intra_op_threads=intra_op_threads)
        return cls(load)

    def load_all(self, entries: list[VersionEntry]) -> None:
        for entry in entries:
            try:
                self.load_one(entry)
            except Exception:  # one bad version must not stop the others
                continue

    def load_one(self, entry: VersionEntry) -> LoadedVersion:
        """Load and publish one version (replacing nothing: an already loaded
        version is returned as is). Raises the loader's error, recorded in
        ``failures``; the serving versions are untouched."""
        key = f"{entry.model}/{entry.version}"
        current = self._models.get(entry.model, {}).get(entry.version)
        if current is not None:
            return current
        try:
            lv = self._load(entry)
        except Exception as exc:
            log.error("model %s failed to load: %s", key, exc)
            self.failures[key] = str(exc)
            raise
        self.failures.pop(key, None)
        log.info("model %s loaded in %.3fs (%s, %d weight bytes), warmed up in %.3fs", key,
                 lv.load_seconds, "re-attached" if lv.attached else "published",
                 lv.weight_bytes, lv.warmup_seconds)
        metrics.WARMUP_SECONDS.labels(lv.model, lv.version).set(lv.warmup_seconds)
        self._add(lv)
        return lv

    def remove(self, model: str, version: str) -> LoadedVersion:
        """Take a version out of service (new lookups stop finding it); the
        caller closes it once its in-flight requests are done."""
        with self._lock:
            lv = self._models.get(model, {}).get(version)
            if lv is None:
                raise NotFound(f"model {model!r} has no loaded version {version!r}")
            models = {k: dict(v) for k, v in self._models.items()}
            del models[model][version]
            if not models[model]:
                del models[model]
            self._models = models
        return lv

    def _add(self, lv: LoadedVersion) -> None:
        with self._lock:
            models = {k: dict(v) for k, v in self._models.items()}
            models.setdefault(lv.model, {})[lv.version] = lv
            self._models = models

    def get(self, model: Any, version: Any = None) -> LoadedVersion:
        versions = self._models.get(model) if isinstance(model, str) else None
        if not versions:
            raise NotFound(f"model {model!r} is not loaded")
        if version is None or version == "":
            return versions[default_version(versions)]
        lv = versions.get(str(version))
        if lv is None:
            raise NotFound(f"model {model!r} has no loaded version {version!r}")
        return lv

    def listing(self, splits: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]:
        splits = splits or {}
        return [{"name": name, "versions": sorted(vs, key=int),
                 "default_version": default_version(vs),
                 "split": {v: w for v, w in splits.get(name, {}).items() if v in vs}}
                for name, vs in sorted(self._models.items())]

    def __len__(self) -> int:
        return sum(len(v) for v in self._models.values())

    def versions(self) -> list[LoadedVersion]:
        return [lv for vs in self._models.values() for lv in vs.values()]

    def close(self, unlink: bool) -> None:
        with self._lock:
            models, self._models = self._models, {}
        for vs in models.values():
            for lv in vs.values():
                lv.close(unlink=unlink)


def default_version(versions: dict[str, Any]) -> str:
    return max(versions, key=int)


def check_feeds(lv: LoadedVersion, feeds: list[tuple[str, np.ndarray]],
                outputs: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    """Validate decoded tensors against the model; return ORT feeds and output names."""
    specs = {s.name: s for s in lv.inputs}
    got: dict[str, np.ndarray] = {}
    for name, arr in feeds:
        spec = specs.get(name)
        if spec is None:
            raise InvalidFeeds(f"input {name!r}", f"the model has no such input "
                               f"(inputs: {', '.join(specs)})")
        if name in got:
            raise InvalidFeeds(f"input {name!r}", "given twice")
        _check_tensor(spec, arr, lv.entry.config.max_request_rows)
        got[name] = arr
    missing = [n for n in specs if n not in got]
    if missing:
        raise InvalidFeeds(f"input {missing[0]!r}", "missing")
    names = [s.name for s in lv.outputs]
    if outputs is None:
        return got, names
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise InvalidFeeds("outputs", "expected a list of output names")
    for o in outputs:
        if o not in names:
            raise InvalidFeeds(f"output {o!r}", "the model has no such output")
    return got, outputs


def _check_tensor(spec: TensorSpec, arr: np.ndarray, max_batch: int) -> None:
    if arr.dtype.str != spec.dtype:
        raise InvalidFeeds(f"input {spec.name!r}", f"dtype {arr.dtype.str}, model expects {spec.dtype}")
    if arr.ndim != len(spec.shape):
        raise InvalidFeeds(f"input {spec.name!r}", f"rank {arr.ndim} (shape {list(arr.shape)}), "
                           f"model expects shape {list(spec.shape)}")
    for i, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
        if want >= 0 and got != want:
            raise InvalidFeeds(f"input {spec.name!r}", f"dimension {i} is {got}, model expects {want}")
    if spec.shape and spec.shape[0] < 0 and arr.shape[0] > max_batch:
        raise InvalidFeeds(f"input {spec.name!r}", f"batch of {arr.shape[0]} rows exceeds "
                           f"max_request_rows {max_batch}")

