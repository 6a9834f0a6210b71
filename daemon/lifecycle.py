"""Model versions while serving: load, unload, traffic splits, rollback.

- **Load** (a version directory dropped into the repository): parse, publish
  to shared memory and build the session in a background thread; a version
  that fails (corrupt file, bad config, unsupported input) is refused with the
  loader's message and the serving versions are untouched.
- **Unload**: the version leaves the registry at once (no new request finds
  it), its in-flight requests finish, then its session closes and its segment
  is unlinked. A version that carries traffic in the split is refused.
- **Traffic split** per model, e.g. ``{"1": 90, "2": 10}``: which version
  answers an unpinned request. The edge chooses (sticky by a routing key) from
  the split the ``models`` op lists. Persisted in ``<repo>/<model>/traffic.json``
  with the history of previous splits, so a restart keeps it and **rollback**
  restores the previous one in one call. No split: the highest version answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from daemon.loader import LoadedVersion
from daemon.registry import Registry
from daemon.repository import CONFIG_FILE, NAME_RE, RepositoryError, VersionEntry, scan
from service.durable import write_atomically

log = logging.getLogger(__name__)

TRAFFIC_FILE = "traffic.json"
HISTORY = 20


class LifecycleError(Exception):
    """A management request cannot be done: unknown model or version, a split
    that does not add up, nothing to roll back to, a version that failed to
    load. ``field`` names the part of the request at fault (``model``, ``split``,
    ``version``), the message says why; nothing was changed."""

    def __init__(self, message: str, field: str = "model") -> None:
        super().__init__(message)
        self.field = field


class UnknownModel(LifecycleError):
    """The model, or the version, is not in the repository or not loaded (a 404,
    where the other LifecycleErrors are a request that cannot be done: 400)."""


def check_split(split: Any, loaded: list[str]) -> dict[str, int]:
    if not isinstance(split, dict) or not split:
        raise LifecycleError("expected a map of version -> weight, e.g. {\"1\": 90, \"2\": 10}",
                             "split")
    out = {}
    for version, weight in split.items():
        if str(version) not in loaded:
            raise LifecycleError(f"version {version!r} is not loaded "
                                 f"(loaded: {', '.join(loaded) or 'none'})", "split")
        if type(weight) is not int or weight < 0:
            raise LifecycleError(f"weight of version {version!r} must be a "
                                 f"non-negative integer, got {weight!r}", "split")
        out[str(version)] = weight
    if sum(out.values()) <= 0:
        raise LifecycleError("the weights add up to 0", "split")
    return out


class Traffic:
    """Splits and their history, one ``traffic.json`` per model directory."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.splits: dict[str, dict[str, int]] = {}
        self.history: dict[str, list[dict[str, int]]] = {}
        for path in sorted(repo.glob(f"*/{TRAFFIC_FILE}")):
            try:
                doc = json.loads(path.read_text())
                self.splits[path.parent.name] = {str(k): int(v) for k, v in doc["split"].items()}
                self.history[path.parent.name] = doc.get("history", [])[-HISTORY:]
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("ignoring %s: %s", path, exc)

    def set(self, model: str, split: dict[str, int]) -> dict[str, int]:
        old = self.splits.get(model, {})
        self.history.setdefault(model, []).append(old)  # {}: "no split" is a state too
        self.splits[model] = split
        self._save(model)
        return old

    def previous(self, model: str) -> dict[str, int]:
        history = self.history.get(model) or []
        if not history:
            raise LifecycleError(f"model {model!r} has no previous split to roll back to")
        return history[-1]

    def rollback(self, model: str) -> tuple[dict[str, int], dict[str, int]]:
        self.previous(model)
        old, new = self.splits.get(model, {}), self.history[model].pop()
        self.splits[model] = new
        self._save(model)
        return old, new

    def _save(self, model: str) -> None:
        """Atomically and durably (``service.durable``)."""
        doc = {"split": self.splits[model], "history": self.history.get(model, [])[-HISTORY:],
               "updated": time.time()}
        write_atomically(self.repo / model / TRAFFIC_FILE, json.dumps(doc), mode=0o644)


class Lifecycle:
    """The management ops of the daemon (run on its event loop)."""

    def __init__(self, registry: Registry, repo: Path) -> None:
        self.registry = registry
        self.repo = repo
        self.traffic = Traffic(repo)
        self._loads = ThreadPoolExecutor(1, thread_name_prefix="load")

    def listing(self) -> list[dict[str, Any]]:
        return self.registry.listing(self.traffic.splits)

    def index(self) -> list[dict[str, Any]]:
        """Every version in the repository and its state (the V2 repository index); a
        model whose config.toml is malformed is one UNAVAILABLE entry without a version,
        the error its reason (the others are listed as ever)."""
        broken: dict[str, str] = {}
        try:
            entries = scan(self.repo, broken)
        except RepositoryError as exc:
            raise LifecycleError(str(exc), "repository") from None
        loaded = {(lv.model, lv.version) for lv in self.registry.versions()}
        out = []
        for e in entries:
            key = f"{e.model}/{e.version}"
            state = "READY" if (e.model, e.version) in loaded else "UNAVAILABLE"
            out.append({"name": e.model, "version": e.version, "state": state,
                        "reason": self.registry.failures.get(key, "")})
        for model, why in sorted(broken.items()):
            out.append({"name": model, "version": "", "state": "UNAVAILABLE",
                        "reason": f"{CONFIG_FILE}: {why}"})
        return out

    def _entries(self, model: str, version: str | None) -> list[VersionEntry]:
        if not isinstance(model, str) or not NAME_RE.match(model):
            raise LifecycleError(f"invalid name {model!r}")
        if not (self.repo / model).is_dir():
            raise UnknownModel(f"model {model!r} is not in the repository {self.repo}")
        broken: dict[str, str] = {}
        try:
            entries = [e for e in scan(self.repo, broken) if e.model == model]
        except RepositoryError as exc:
            raise LifecycleError(f"{model}: {exc}") from None
        if model in broken:  # its own config.toml is broken: refuse, change nothing
            raise LifecycleError(f"{model}/{CONFIG_FILE}: {broken[model]}")
        if version is not None:
            entries = [e for e in entries if e.version == str(version)]
            if not entries:
                raise UnknownModel(f"model {model!r} has no version {version!r} in the repository")
        return entries

    async def load(self, model: str, version: str | None) -> list[str]:
        entries = self._entries(model, version)
        loop = asyncio.get_running_loop()
        done = []
        for entry in entries:
            try:
                lv = await loop.run_in_executor(self._loads, self.registry.load_one, entry)
            except Exception as exc:  # the loader's own message: corrupt file, bad graph...
                raise LifecycleError(f"{entry.model}/{entry.version} failed to load: {exc}") from None
            done.append(lv.version)
        return done

    async def unload(self, model: str, version: str | None, drain_s: float = 30.0) -> list[str]:
        loaded = [lv for lv in self.registry.versions() if lv.model == model
                  and (version is None or lv.version == str(version))]
        if not loaded:
            raise UnknownModel(f"model {model!r} has no loaded version "
                                 f"{version if version is not None else ''}".rstrip())
        split = self.traffic.splits.get(model, {})
        for lv in loaded:
            if split.get(lv.version, 0) > 0 and len(loaded) < len(self._versions(model)):
                raise LifecycleError(f"{model}/{lv.version} carries {split[lv.version]} of the "
                                     "traffic split: change the split first")
        for lv in loaded:
            self.registry.remove(lv.model, lv.version)
        for lv in loaded:
            await self._retire(lv, drain_s)
        if version is None:
            self.traffic.splits.pop(model, None)
        return [lv.version for lv in loaded]

    def _versions(self, model: str) -> list[str]:
        return [lv.version for lv in self.registry.versions() if lv.model == model]

    async def _retire(self, lv: LoadedVersion, drain_s: float) -> None:
        deadline = time.monotonic() + drain_s
        while lv.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        lv.close(unlink=True)
        log.info("model %s/%s unloaded", lv.model, lv.version)

    def set_split(self, model: str, split: Any) -> dict[str, Any]:
        versions = self._versions(model)
        if not versions:
            raise UnknownModel(f"model {model!r} is not loaded")
        new = check_split(split, versions)
        old = self.traffic.set(model, new)
        log.info("model %s: traffic split %s -> %s", model, old or "default", new)
        return {"model": model, "old": old, "new": new}

    def rollback(self, model: str) -> dict[str, Any]:
        if not self._versions(model):
            raise UnknownModel(f"model {model!r} is not loaded")
        previous = self.traffic.previous(model)
        missing = [v for v, w in previous.items() if w > 0 and v not in self._versions(model)]
        if missing:
            raise LifecycleError(f"cannot roll back {model!r}: version(s) {', '.join(missing)} "
                                 "of the previous split are not loaded")
        old, new = self.traffic.rollback(model)
        log.info("model %s: rolled back traffic split %s -> %s", model, old, new)
        return {"model": model, "old": old, "new": new}

