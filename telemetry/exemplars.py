"""Exemplars (the trace id of a sampled request) on latency histograms, multiprocess too.

Usage::

    EXEMPLARS = Exemplars()                      # one per process, module level
    EXEMPLARS.observe(LATENCY, (model, face), seconds, trace_id)   # trace_id None: none
    # at /metrics, over prometheus-client's multiprocess collector:
    registry.register(WithExemplars(MultiProcessCollector(None, path), path))

prometheus-client keeps exemplars in memory only: in multiprocess mode (every
process of a host writes its metrics to ``PROMETHEUS_MULTIPROC_DIR``, see
``service.metrics``) ``observe(v, exemplar=...)`` drops them. So each process
also keeps its latest exemplar per histogram bucket and writes them to
``<dir>/exemplars_<pid>.json`` (atomically; at its first exemplar, then at the
first one at least ``write_every_s`` after the last write, so a newer exemplar can
wait in memory for the next sampled observation of that process), and
:class:`WithExemplars` attaches the newest one of every live process to the merged
bucket samples at scrape time. Exemplars are exposed only in the OpenMetrics format
(``Accept: application/openmetrics-text``; Prometheus asks for it, and stores them
with ``--enable-feature=exemplar-storage``). Without a multiprocess directory the
histogram's own exemplars are served.

File: a JSON list of ``[metric, {label: value}, le, trace_id, value, unix_time]``.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import Histogram
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from shm.names import pid_alive

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "exemplars_"
WRITE_EVERY_S = 0.2


class Exemplars:
    """This process's latest exemplar per histogram bucket (see the module docstring).
    ``directory``: where to share them; None reads ``$PROMETHEUS_MULTIPROC_DIR`` at the
    first write (unset: not shared). Safe across fork: a child starts empty."""

    def __init__(self, directory: str | Path | None = None, *,
                 write_every_s: float = WRITE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.write_every_s = write_every_s
        self.clock = clock
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._latest: dict[tuple[str, tuple[str, ...], str], list[Any]] = {}
        self._pid = os.getpid()
        self._written = -float("inf")
        self._dirty = False

    def observe(self, histogram: Histogram, labelvalues: tuple[str, ...], value: float,
                trace_id: str | None) -> None:
        """``histogram.labels(*labelvalues).observe(value)``, with ``trace_id`` as the
        exemplar when it is not None."""
        key = (id(histogram), labelvalues)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = histogram.labels(*labelvalues)
        if trace_id is None:
            child.observe(value)
            return
        child.observe(value, exemplar={"trace_id": trace_id})
        self._remember(histogram, labelvalues, value, trace_id)

    def _remember(self, histogram: Histogram, labelvalues: tuple[str, ...], value: float,
                  trace_id: str) -> None:
        if os.getpid() != self._pid:  # forked: the parent's exemplars are not ours
            self._latest.clear()
            self._pid, self._written = os.getpid(), -float("inf")
        # NOTE: prometheus-client's Histogram keeps its name, label names and bounds in
        # these attributes (unchanged since 0.4); its public API exposes none of them.
        bounds = histogram._upper_bounds  # type: ignore[attr-defined]
        le = floatToGoString(bounds[bisect.bisect_left(bounds, value)])
        name = histogram._name  # type: ignore[attr-defined]
        self._latest[name, labelvalues, le] = [
            name, dict(zip(histogram._labelnames, labelvalues, strict=True)),  # type: ignore[attr-defined]
            le, trace_id, value, time.time()]
        self._dirty = True
        now = self.clock()
        if now - self._written >= self.write_every_s:
            self._written = now
            self.write()

    def write(self) -> None:
        """Share this process's exemplars now (nothing without a directory)."""
        directory = self.directory or (Path(os.environ[ENV]) if os.environ.get(ENV) else None)
        if directory is None or not self._dirty:
            return
        path = directory / f"{PREFIX}{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        # NOTE: a plain rename, not service.durable.write_atomically: the file is rewritten
        # every WRITE_EVERY_S on the request path and worthless after a crash (the scrape
        # drops a dead process's files, .tmp included), so no fsync is paid for it.
        try:
            tmp.write_text(json.dumps(list(self._latest.values())))
            os.replace(tmp, path)
            self._dirty = False
        except OSError:  # the metrics directory is gone: exemplars are best effort
            pass


def read(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...], str], Exemplar]:
    """The newest exemplar per (metric, labels, le) of every live process's file;
    the files of dead processes (and their half-written ``.tmp``) are removed."""
    found: dict[tuple[str, tuple[tuple[str, str], ...], str], Exemplar] = {}
    for path in directory.glob(f"{PREFIX}*"):
        pid = path.stem[len(PREFIX):]
        if not pid.isdigit() or not pid_alive(int(pid)):  # (a .tmp too: a write cut short)
            path.unlink(missing_ok=True)
            continue
        if path.suffix != ".json":
            continue
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for name, labels, le, trace_id, value, ts in entries:
            key = (name, tuple(sorted(labels.items())), le)
            if key not in found or found[key].timestamp < ts:  # type: ignore[operator]
                found[key] = Exemplar({"trace_id": trace_id}, value, ts)
    return found


class WithExemplars(Collector):
    """``inner``'s metrics with the exemplars shared in ``directory`` attached to the
    histogram buckets they fall in."""

    def __init__(self, inner: Collector, directory: str | Path) -> None:
        self.inner = inner
        self.directory = Path(directory)

    def collect(self) -> Iterable[Any]:
        found = read(self.directory)
        names = {key[0] for key in found}
        for family in self.inner.collect():
            if family.type == "histogram" and family.name in names:
                family.samples = list(_attach(family.name, family.samples, found))
            yield family


def _attach(name: str, samples: list[Any], found: dict[Any, Exemplar]) -> Iterator[Any]:
    for sample in samples:
        if sample.name == name + "_bucket" and sample.exemplar is None:
            le = sample.labels.get("le")
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            exemplar = found.get((name, labels, le))
            if exemplar is not None:
                sample = sample._replace(exemplar=exemplar)
        yield sample
