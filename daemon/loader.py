"""Load one model version into shared memory and build its ONNX Runtime session.

Cold load (no intact segment): parse the ONNX file, move every initializer
into one ``shm`` segment (as arrays) together with the *weight-stripped* graph
(as a blob), then build the session from the segment. Re-attach (a previous
daemon left an intact segment): build the session from the segment alone; the
ONNX file is not read at all, only ``stat``-ed to name the segment.

How the session runs on the shared buffers without a private copy:

- in the stripped graph each moved initializer becomes an EXTERNAL tensor
  whose location is an empty placeholder file (ORT validates that the file
  exists but never reads it, because of the next point);
- each initializer is handed to ``SessionOptions.add_initializer`` as an
  ``OrtValue`` over the read-only shared array. The OrtValues must outlive the
  session (ORT keeps raw pointers; dropping them segfaults), so
  :class:`LoadedVersion` holds them;
- ``session.disable_prepacking=1`` unless the model's config says
  ``prepack = true``: prepacking makes a private packed copy of MatMul/Gemm
  weights (faster at large batches, but memory per process). See
  ``bench/prepack.py`` for the measurement behind the default.

The segment name is derived from the file's identity (path, size, mtime,
inode), so a replaced model file gets a new segment, never a stale one.

The types served, a ZipMap output as its ``[N, C]`` tensor, and what a refused
type's message advises are :mod:`daemon.tensortypes`; :meth:`LoadedVersion.run`
converts ZipMap outputs.

Warm-up (:func:`warm_up`): before :func:`load` returns (so before the registry
publishes the version, and before the daemon announces READY), the version runs
on synthetic inputs at 1 row and at its batch size, after a re-attach too. A
version that cannot answer the 1-row run is refused with the cause.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

import shm
from daemon import tensortypes
from daemon.repository import VersionEntry
from daemon.tensortypes import STRING, TensorSpec, UnsupportedType, tensor_spec

log = logging.getLogger(__name__)

PLACEHOLDER = "falcon-placeholder.bin"
# NOTE: tiny initializers stay in the graph: shape inference reads tensors
# such as Reshape's target shape at load time and cannot read external data.
# They are a few bytes; everything larger is shared.
EMBED_MAX_ELEMENTS = 64
GRAPH_BLOB = "graph"


class LoadError(Exception):
    """A model version could not be loaded: unreadable or invalid ONNX, an input
    or output of an unsupported type, or ONNX Runtime refused the graph. The
    serving versions are untouched."""


@dataclass
class LoadedVersion:
    """A servable model version. Holds the session, the segment and the
    OrtValues the session points into; :meth:`close` releases them."""

    entry: VersionEntry
    session: ort.InferenceSession
    segment: shm.Segment
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    attached: bool            # True: re-attached to an existing segment
    load_seconds: float
    inflight: int = 0         # requests admitted and not yet answered (the event loop counts)
    warmup_seconds: float = 0.0  # the synthetic runs of :func:`warm_up`
    _ortvalues: list[Any] = field(default_factory=list, repr=False)
    _zipmaps: dict[str, tuple[int | str, ...]] = field(default_factory=dict, repr=False)
    # runs in progress, and the close() that waits for them (issue 15 item 12)
    _runs: int = field(default=0, repr=False)
    _closing: bool | None = field(default=None, repr=False)  # None, or close()'s unlink
    _runs_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._zipmaps = {s.name: s.class_labels for s in self.outputs if s.class_labels}

    @property
    def model(self) -> str:
        return self.entry.model

    @property
    def version(self) -> str:
        return self.entry.version

    @property
    def weight_bytes(self) -> int:
        return self.segment.nbytes

    def metadata(self) -> dict[str, Any]:
        return {"name": self.model, "version": self.version, "platform": "onnxruntime_onnx",
                "inputs": [t.to_wire() for t in self.inputs],
                "outputs": [t.to_wire() for t in self.outputs],
                "config": self.entry.config.to_wire(), "weight_bytes": self.weight_bytes,
                # the segment's SHA-256 (graph, weights, model and version): what the
                # edge's prediction cache keys on, so a replaced file never hits
                "content_digest": self.segment.digest}

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        """ONNX Runtime's outputs; a ZipMap output (a list of dicts) as its [N, C] tensor.
        Raises RuntimeError once :meth:`close` was called."""
        with self._runs_lock:
            if self._closing is not None or self.session is None:
                raise RuntimeError(f"{self.model}/{self.version} is unloaded")
            self._runs += 1
            session = self.session
        try:
            arrays = session.run(output_names, feeds)
        finally:
            with self._runs_lock:
                self._runs -= 1
                deferred = self._closing if self._runs == 0 else None
            if deferred is not None:  # the close() that waited for this run
                self._release(deferred)
        if self._zipmaps:
            for i, name in enumerate(output_names):
                labels = self._zipmaps.get(name)
                if labels is not None:
                    arrays[i] = tensortypes.zipmap_to_array(arrays[i], labels)
        return arrays

    def close(self, unlink: bool) -> None:
        """Drop the session, then the OrtValues, then the mapping (that order:
        the session points into the OrtValues, which point into the mapping).
        Never under a running session: with a run in progress (a drain that timed
        out), the last run to end does it; later runs are refused."""
        with self._runs_lock:
            if self._closing is not None:
                return
            self._closing = unlink
            if self._runs:
                log.warning("%s/%s: %d run(s) still reading its weights; released when "
                            "they end", self.model, self.version, self._runs)
                return
        self._release(unlink)

    def _release(self, unlink: bool) -> None:
        self.session = None  # type: ignore[assignment]
        self._ortvalues.clear()
        if unlink:
            self.segment.unlink()
        self.segment.close()


def segment_name(prefix: str, entry: VersionEntry) -> str:
    st = entry.path.stat()
    ident = f"{entry.path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    return f"{prefix}.{entry.model}.{entry.version}.{hashlib.sha1(ident.encode()).hexdigest()[:16]}"


def load(entry: VersionEntry, *, prefix: str, placeholder_dir: Path,
         intra_op_threads: int = 0) -> LoadedVersion:
    """Attach to an intact segment or publish a new one, then build the session.

    Raises :class:`LoadError`; a corrupt segment is unlinked and rebuilt.
    """
    started = time.perf_counter()
    name = segment_name(prefix, entry)
    segment, attached = _attach_or_publish(name, entry)
    try:
        session, ortvalues = _session(segment, entry, placeholder_dir, intra_op_threads)
        try:
            inputs = [tensor_spec(a, "input") for a in session.get_inputs()]
            zipmaps = _zipmap_labels(segment, session)
            outputs = [tensor_spec(a, "output", zipmaps) for a in session.get_outputs()]
        except UnsupportedType as exc:
            raise LoadError(f"{entry.path}: {exc}") from None
    except BaseException:
        segment.close()
        if not attached:
            segment.unlink()
        raise
    _trim_heap()
    lv = LoadedVersion(entry, session, segment, inputs, outputs, attached,
                       time.perf_counter() - started, _ortvalues=ortvalues)
    try:
        lv.warmup_seconds = warm_up(lv)
    except BaseException:
        lv.close(unlink=not attached)
        raise
    return lv


def warmup_rows(lv: LoadedVersion) -> list[int]:
    """The batch sizes :func:`warm_up` runs: 1 and the version's batch size when every
    input has a dynamic first dimension, else the inputs' own (fixed) sizes once."""
    if not all(s.shape and s.shape[0] < 0 for s in lv.inputs):
        return [0]  # 0: every dimension as the model fixes it (dynamic ones: 1)
    config = lv.entry.config
    batch = config.batching.max_run_rows or config.max_request_rows
    return sorted({1, max(1, batch)})


def synthetic_feeds(lv: LoadedVersion, rows: int) -> dict[str, np.ndarray]:
    """Zeros (``""`` for strings, False for bools) of every input's shape, the first
    dimension ``rows`` where dynamic and other dynamic dimensions 1."""
    feeds = {}
    for spec in lv.inputs:
        shape = [d if d >= 0 else (rows if i == 0 and rows else 1)
                 for i, d in enumerate(spec.shape)]
        if spec.dtype == STRING:
            feeds[spec.name] = np.full(shape, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
    return feeds


def warm_up(lv: LoadedVersion) -> float:
    """Run ``lv`` on synthetic inputs (:func:`synthetic_feeds`) at 1 row and at its batch
    size, every output asked, before it is published: ONNX Runtime allocates its arenas
    and picks its kernels on a first run, which the first request would otherwise pay.
    Returns the seconds taken (logged and exported by the registry).

    Raises :class:`LoadError` naming the cause when the first run fails: a version that
    cannot answer a row is refused like a corrupt one. A failure at the batch size only
    is logged: the version serves (its requests run alone; :mod:`daemon.batcher`
    unbatches a model that only takes one row)."""
    started = time.perf_counter()
    names = [s.name for s in lv.outputs]
    answers: dict[int, list[np.ndarray]] = {}
    for k, rows in enumerate(warmup_rows(lv)):
        try:
            answers[rows] = lv.run(synthetic_feeds(lv, rows), names)
        except Exception as exc:  # ORT raises its own classes
            size = f"{rows} row{'s' if rows != 1 else ''}" if rows else "its fixed shape"
            if k == 0:
                raise LoadError(f"{lv.entry.path}: warm-up on synthetic inputs ({size}: zeros, "
                                f"empty strings) failed: {exc}") from None
            log.warning("model %s/%s: warm-up at %s failed (%s); requests will run alone",
                        lv.model, lv.version, size, exc)
    _fix_declared_batch_dims(lv, answers)
    return time.perf_counter() - started


def _fix_declared_batch_dims(lv: LoadedVersion, answers: dict[int, list[np.ndarray]]) -> None:
    """An output declared with a fixed first dimension of 1 that answered 1 row with 1
    and the batch size with the batch size gets a dynamic first dimension, so the
    version batches (onnxmltools declares a LightGBM classifier's label [1]). The
    batcher still checks every run's first dimensions (:mod:`daemon.batcher`)."""
    sizes = [rows for rows in answers if rows > 1]
    if 1 not in answers or not sizes:
        return
    for i, spec in enumerate(lv.outputs):
        if spec.shape[:1] == (1,) and answers[1][i].shape[:1] == (1,) and all(
                answers[rows][i].shape[:1] == (rows,) for rows in sizes):
            lv.outputs[i] = TensorSpec(spec.name, spec.dtype, (-1, *spec.shape[1:]),
                                       spec.class_labels)
            log.info("model %s/%s: output %r is declared [1, ...] but answers one row per "
                     "input row: served as [N, ...]", lv.model, lv.version, spec.name)


def _attach_or_publish(name: str, entry: VersionEntry) -> tuple[shm.Segment, bool]:
    """The intact segment ``name`` (re-attached, digest verified) or a new one.

    Segments live in a directory only the service user can enter (:mod:`shm.names`),
    so whatever sits under ``name`` there was put by us (or root): a corrupt or
    foreign entry (:class:`shm.SegmentForeign`: a link, FIFO, another owner) is
    removed and the version published afresh, never read and never fatal."""
    try:
        return shm.attach(name), True
    except shm.SegmentNotFound:
        pass
    except shm.SegmentCorrupt as exc:  # SegmentForeign included
        log.warning("segment %s is corrupt (%s): rebuilding it", name, exc)
        try:
            shm.unlink(name)
        except OSError as err:  # a directory under that name, say
            raise LoadError(f"segment {name} cannot be replaced: {err}") from None
    graph, arrays = _strip(entry.path)
    try:
        # no file path in meta: the segment's digest is the version's content digest
        # (the prediction cache's key), the same on every host that has this file
        segment = shm.publish(name, arrays, {GRAPH_BLOB: graph},
                              meta={"model": entry.model, "version": entry.version})
    except shm.SegmentExists:  # published concurrently by another process: use theirs
        return shm.attach(name), True
    return segment, False


def _strip(path: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    """The graph without its weights, and the weights as arrays."""
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValidationError...
        raise LoadError(f"{path}: not a readable ONNX model: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        if (tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED)
                or np.prod(tensor.dims, dtype=np.int64) <= EMBED_MAX_ELEMENTS):
            continue
        arrays[tensor.name] = numpy_helper.to_array(tensor)
        for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                  "uint64_data", "string_data"):
            tensor.ClearField(f)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.EXTERNAL
        loc = tensor.external_data.add()
        loc.key, loc.value = "location", PLACEHOLDER
    return model.SerializeToString(), arrays


def _session(segment: shm.Segment, entry: VersionEntry, placeholder_dir: Path,
             intra_op_threads: int) -> tuple[ort.InferenceSession, list[Any]]:
    placeholder_dir.mkdir(parents=True, exist_ok=True)
    (placeholder_dir / PLACEHOLDER).touch()
    so = ort.SessionOptions()
    so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                str(placeholder_dir))
    if not entry.config.prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    threads = entry.config.intra_op_threads or intra_op_threads
    if not entry.config.intra_op_threads and _row_order_dependent(entry, segment):
        threads = 1
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    ortvalues = []
    for name, array in segment.arrays.items():
        value = ort.OrtValue.ortvalue_from_numpy(array)
        ortvalues.append(value)
        so.add_initializer(name, value)
    try:
        session = ort.InferenceSession(bytes(segment.blobs[GRAPH_BLOB]), so,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... classes
        hint = tensortypes.LOCALE_ADVICE if "construct locale" in str(exc) else ""
        raise LoadError(f"{entry.path}: ONNX Runtime refused the model: {exc}{hint}") from None
    return session, ortvalues


def _row_order_dependent(entry: VersionEntry, segment: shm.Segment) -> bool:
    """Whether the version must run on one intra-op thread to keep ``[batching] exact``:
    its graph has a tree ensemble (:data:`daemon.tensortypes.ROW_ORDER_DEPENDENT_OPS`).
    Off with ``exact = false`` or an explicit ``intra_op_threads``."""
    if not entry.config.batching.exact or not tensortypes.row_order_dependent(
            bytes(segment.blobs[GRAPH_BLOB])):
        return False
    log.info("model %s/%s: tree ensemble: one intra-op thread, so that batching never "
             "changes a row's answer ([batching] exact)", entry.model, entry.version)
    return True


def _zipmap_labels(segment: shm.Segment, session: ort.InferenceSession
                   ) -> dict[str, tuple[int | str, ...]]:
    """Class labels of the ZipMap outputs. PERF: only a model with a sequence output
    pays for parsing its (weight-stripped) graph."""
    if not any(o.type in tensortypes.ZIPMAP_TYPES for o in session.get_outputs()):
        return {}
    return tensortypes.zipmap_labels(bytes(segment.blobs[GRAPH_BLOB]))


def _trim_heap() -> None:
    """Give the transient parse buffers back to the OS (glibc keeps freed heap)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def placeholder_dir_for(run_dir: str) -> Path:
    return Path(run_dir) / "onnx-placeholder"
