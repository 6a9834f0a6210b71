"""Measure ONNX Runtime weight prepacking for sessions whose weights live in shared memory.

Usage::

    python -m bench.prepack [--heavy PATH/model.onnx] [--digits PATH/model.onnx]
        [--budget 1.5] [--rounds 5] [--out bench/out/prepack.json]

The daemon builds each session from a weight-stripped graph (initializers turned into
EXTERNAL entries pointing at an empty placeholder file, with
``session.model_external_initializers_file_folder_path`` set to its folder) plus
``SessionOptions.add_initializer`` for every stripped tensor, each an OrtValue over a view
of the shared segment. This script reproduces that path with a plain file in /dev/shm,
mapped read-only with mmap + ``np.frombuffer``. Modes, each run ``--rounds`` times in a
fresh subprocess, in alternating order:

- ``shm-on``: that path with ``session.disable_prepacking`` "0" (the ORT default);
- ``shm-off``: the same with "1" (the daemon's default, ``prepack = false``);
- ``file``: a plain session from the original model file, ORT defaults (for reference:
  what every process would pay without the segment).

Per mode it reports: private memory growth (Private_Clean + Private_Dirty from
/proc/self/smaps_rollup, and Private_Dirty alone) across session creation and after the
latency runs, session-create time, and the median latency and calls/s at batch 1 and
batch 32 (default intra-op threads). The parent keeps the segment mapped and touched, so in
the child the segment's pages are shared (mapcount > 1) and do not show as private; the
child reports the segment mapping's own Private as a check of that ("seg priv").

Reading the numbers: Private_Clean growth is file-backed pages only this process has
mapped, mostly onnxruntime's library code faulted in by the first session (~8 MiB); it is
shared with any other process using ORT and disappears when one is running. Private_Dirty
is the memory a session really costs per process. Latency is the best round's median (see
:func:`summarise`). Output: a table on stdout and JSON in ``bench/out/prepack.json``.

NOTE: small int64 initializers (Reshape shapes, Reduce axes, ...) stay inline in the graph:
ONNX shape inference must read their values at load, and fails on an external tensor.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIGITS = REPO_ROOT / "models" / "digits" / "1" / "model.onnx"
DEFAULT_OUT = REPO_ROOT / "bench" / "out" / "prepack.json"
PLACEHOLDER = "placeholder.bin"
DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")
ALIGN = 64
INLINE_INT64_MAX_BYTES = 4096
BATCHES = (1, 32)
WARMUP_RUNS = 3
MAX_RUNS = 2000
PAGE = mmap.PAGESIZE
KIB = 1024
MIB = 1024 * 1024
SMAPS_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


@dataclass(frozen=True)
class Tensor:
    """One shared initializer: where it lies in the segment."""

    name: str
    dtype: str
    shape: list[int]
    offset: int


@dataclass(frozen=True)
class Prepared:
    """A model split into a stripped graph and a /dev/shm weight segment."""

    model: str
    stripped: str
    segment: str
    segment_bytes: int
    inline: list[str]
    tensors: list[Tensor]


# ------------------------------------------------------------------ preparation (parent)


def keep_inline(t: TensorProto) -> bool:
    return t.data_type == TensorProto.INT64 and _nbytes(t) <= INLINE_INT64_MAX_BYTES


def _nbytes(t: TensorProto) -> int:
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


def _make_external(t: TensorProto) -> None:
    for field in DATA_FIELDS:
        t.ClearField(field)
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    entry = t.external_data.add()
    entry.key, entry.value = "location", PLACEHOLDER


def segment_path(name: str) -> Path:
    return Path("/dev/shm") / f"falcon-bench-prepack-{os.getpid()}-{name}"


def prepare(model_path: Path, segment: Path, workdir: Path) -> Prepared:
    """Write the segment, ``workdir/stripped.onnx`` and the placeholder; return the manifest."""
    model = onnx.load(str(model_path))
    tensors, inline, offset = [], [], 0
    with open(segment, "wb") as seg:
        for t in model.graph.initializer:
            if keep_inline(t):
                inline.append(t.name)
                continue
            arr = numpy_helper.to_array(t)
            offset = -(-offset // ALIGN) * ALIGN
            seg.seek(offset)
            seg.write(np.ascontiguousarray(arr).tobytes())
            tensors.append(Tensor(t.name, arr.dtype.str, list(arr.shape), offset))
            offset += arr.nbytes
            _make_external(t)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / PLACEHOLDER).touch()
    stripped = workdir / "stripped.onnx"
    stripped.write_bytes(model.SerializeToString())
    return Prepared(str(model_path), str(stripped), str(segment), offset, inline, tensors)


def hold_segment(path: str) -> mmap.mmap | None:
    """Map the segment and touch every page, so children see its pages as shared."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    np.frombuffer(mm, dtype=np.uint8)[::PAGE].sum()
    return mm


# ----------------------------------------------------------------- measurement (child)


def private_kb() -> tuple[int, int]:
    """(Private_Clean, Private_Dirty) of this process in kB, from smaps_rollup."""
    fields = _smaps_fields(Path("/proc/self/smaps_rollup").read_text())
    return fields["Private_Clean"], fields["Private_Dirty"]


def growth_mib(before: tuple[int, int], after: tuple[int, int]) -> dict[str, float]:
    clean, dirty = (a - b for a, b in zip(after, before, strict=True))
    return {"total": (clean + dirty) / KIB, "clean": clean / KIB, "dirty": dirty / KIB}


def _smaps_fields(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            out[key] = out.get(key, 0) + int(rest.split()[0])
    return out


def mapping_kb(path: str) -> dict[str, int]:
    """Rss and Private (kB) of the mappings of ``path`` in this process."""
    picked, inside = [], False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if SMAPS_HEADER.match(line):
            inside = line.rstrip().endswith(" " + path)
        elif inside:
            picked.append(line)
    fields = _smaps_fields("\n".join(picked))
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"rss_kb": fields.get("Rss", 0), "private_kb": private}


def open_segment(prep: Prepared) -> tuple[mmap.mmap | None, dict[str, np.ndarray]]:
    if not prep.tensors:
        return None, {}
    with open(prep.segment, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    views = {}
    for t in prep.tensors:
        count = int(np.prod(t.shape, dtype=np.int64))
        arr = np.frombuffer(mm, dtype=np.dtype(t.dtype), count=count, offset=t.offset)
        views[t.name] = arr.reshape(t.shape)
    return mm, views


@dataclass
class Setup:
    """Everything a session is built from; ``keep`` must outlive the session."""

    source: str | bytes
    options: Any
    keep: list[Any]


def setup_for(prep: Prepared, mode: str) -> Setup:
    """``file``: the original model, ORT defaults. ``shm-on``/``shm-off``: the daemon's
    path (stripped graph + segment views), prepacking on or off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if mode == "file":
        return Setup(prep.model, so, [])
    folder = str(Path(prep.stripped).parent)
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    so.add_session_config_entry("session.disable_prepacking", "0" if mode == "shm-on" else "1")
    mm, views = open_segment(prep)
    # The OrtValues must outlive the session: ORT keeps raw pointers to their buffers.
    values = {name: ort.OrtValue.ortvalue_from_numpy(arr) for name, arr in views.items()}
    for name, value in values.items():
        so.add_initializer(name, value)
    return Setup(Path(prep.stripped).read_bytes(), so, [mm, views, values])


def make_feeds(sess: Any, batch: int) -> dict[str, np.ndarray]:
    inp = sess.get_inputs()[0]
    rng = np.random.default_rng(batch)
    return {inp.name: rng.standard_normal((batch, inp.shape[1]), dtype=np.float32)}


def time_runs(sess: Any, feeds: dict[str, np.ndarray], budget: float) -> dict[str, float]:
    for _ in range(WARMUP_RUNS):
        sess.run(None, feeds)
    times: list[float] = []
    total, cpu_start = 0.0, time.process_time()
    while total < budget and len(times) < MAX_RUNS:
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
        total += times[-1]
    return {
        "runs": len(times),
        "median_ms": statistics.median(times) * 1e3,
        "calls_per_s": len(times) / total,
        # CPU seconds per wall second while timing: falls when other processes compete.
        "cpu_per_wall": (time.process_time() - cpu_start) / total,
    }


def output_check(sess: Any, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    label, probs = sess.run(["label", "probabilities"], feeds)
    return {
        "labels": np.asarray(label).tolist(),
        "probabilities": np.asarray(probs).round(6).tolist(),
        "finite": bool(np.isfinite(probs).all()),
    }


def child(prep: Prepared, mode: str, budget: float) -> dict[str, Any]:
    import onnxruntime as ort

    setup = setup_for(prep, mode)
    before = private_kb()
    start = time.perf_counter()
    sess = ort.InferenceSession(setup.source, setup.options, providers=["CPUExecutionProvider"])
    create_s = time.perf_counter() - start
    after_create = private_kb()
    feeds = {b: make_feeds(sess, b) for b in BATCHES}
    latency = {str(b): time_runs(sess, feeds[b], budget) for b in BATCHES}
    return {
        "mode": mode,
        "ort_version": ort.__version__,
        "create_s": create_s,
        "private_create_mib": growth_mib(before, after_create),
        "private_after_runs_mib": growth_mib(before, private_kb()),
        "segment_mapping": mapping_kb(prep.segment),
        "latency": latency,
        "check": output_check(sess, feeds[max(BATCHES)]),
    }


# ------------------------------------------------------------------------ orchestration

MODES = ("shm-on", "shm-off", "file")


def run_child(prep_file: Path, mode: str, budget: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(prep_file), "--mode", mode]
    cmd += ["--budget", str(budget)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} failed ({proc.returncode}):\n{proc.stderr}")
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def round_order(i: int) -> tuple[str, ...]:
    """Alternate the order between rounds so slow drift does not favour one mode."""
    return MODES if i % 2 == 0 else MODES[::-1]


def run_rounds(
    prep: Prepared, prep_file: Path, args: argparse.Namespace
) -> dict[str, list[dict[str, Any]]]:
    prep_file.write_text(json.dumps(asdict(prep)))
    held = hold_segment(prep.segment)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    try:
        for i in range(args.rounds):
            for mode in round_order(i):
                runs[mode].append(run_child(prep_file, mode, args.budget))
    finally:
        if held is not None:
            held.close()
    return runs


def bench_model(name: str, model: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    segment = segment_path(name)
    try:
        prep = prepare(model, segment, workdir / name)
        runs = run_rounds(prep, workdir / name / "prepared.json", args)
    finally:
        segment.unlink(missing_ok=True)
    checks = [r["check"] for mode_runs in runs.values() for r in mode_runs]
    return {
        "model": name,
        "path": str(model),
        "segment_bytes": prep.segment_bytes,
        "shared_tensors": len(prep.tensors),
        "inline_tensors": prep.inline,
        "outputs_agree": all(_outputs_agree(checks[0], c) for c in checks[1:]),
        "summary": {m: summarise(r) for m, r in runs.items()},
        "runs": runs,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Memory and create time: medians over rounds. Latency: the best round's median.

    PERF: each round's latency is a median over many calls, but a whole round can land
    while other processes use the cores (a shared 2-core host); the fastest round is the
    least disturbed estimate. Every round's median stays in the JSON.
    """

    def med(get: Any) -> float:
        return float(statistics.median(get(r) for r in runs))

    out: dict[str, Any] = {
        "create_s": med(lambda r: r["create_s"]),
        "private_create_mib": med(lambda r: r["private_create_mib"]["total"]),
        "private_dirty_create_mib": med(lambda r: r["private_create_mib"]["dirty"]),
        "private_after_runs_mib": med(lambda r: r["private_after_runs_mib"]["total"]),
        "private_create_mib_range": _range([r["private_create_mib"]["total"] for r in runs]),
        "segment_private_mib": max(r["segment_mapping"]["private_kb"] for r in runs) / KIB,
    }
    for b in map(str, BATCHES):
        best = min((r["latency"][b] for r in runs), key=lambda lat: lat["median_ms"])
        out[f"b{b}_median_ms"] = best["median_ms"]
        out[f"b{b}_calls_per_s"] = best["calls_per_s"]
        out[f"b{b}_cpu_per_wall"] = best["cpu_per_wall"]
        out[f"b{b}_round_medians_ms"] = [r["latency"][b]["median_ms"] for r in runs]
        out[f"b{b}_round_cpu_per_wall"] = [r["latency"][b]["cpu_per_wall"] for r in runs]
    return out


def _range(values: list[float]) -> list[float]:
    return [min(values), max(values)]


def _outputs_agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    close = np.allclose(a["probabilities"], b["probabilities"], atol=1e-5)
    return bool(a["finite"] and b["finite"] and a["labels"] == b["labels"] and close)


def ensure_heavy(path: Path | None, workdir: Path) -> Path:
    if path is not None:
        return path
    from tests.modelfactory import write_mlp_model

    print("generating heavy model (1024 -> 4x4352 -> 10) ...", flush=True)
    return write_mlp_model(
        workdir / "repo", "heavy", input_dim=1024, hidden=4352, layers=4, classes=10, seed=0
    )


HEADER = (
    f"{'model':<7} {'weights':>9} {'mode':<8} {'create':>7} {'priv+create':>11} {'dirty':>9} "
    f"{'priv+runs':>9} {'b1 ms':>7} {'b1 /s':>7} {'b32 ms':>7} {'b32 /s':>7} {'cpu/wall':>8} {'seg priv':>8}"
)


def table_rows(report: dict[str, Any]) -> list[str]:
    rows = []
    for mode, s in report["summary"].items():
        rows.append(
            f"{report['model']:<7} {_size(report['segment_bytes']):>9} {mode:<8} "
            f"{s['create_s']:>6.3f}s {s['private_create_mib']:>8.1f}MiB "
            f"{s['private_dirty_create_mib']:>6.1f}MiB "
            f"{s['private_after_runs_mib']:>6.1f}MiB "
            f"{s['b1_median_ms']:>7.3f} {s['b1_calls_per_s']:>7.0f} "
            f"{s['b32_median_ms']:>7.3f} {s['b32_calls_per_s']:>7.0f} "
            f"{s['b1_cpu_per_wall']:>3.1f}/{s['b32_cpu_per_wall']:>3.1f} "
            f"{s['segment_private_mib']:>5.1f}MiB"
        )
    return rows


def _size(n: int) -> str:
    return f"{n / MIB:.1f}MiB" if n >= MIB else f"{n / KIB:.1f}KiB"


def comparison(report: dict[str, Any]) -> str:
    """One line: what turning prepacking off costs in latency and saves in memory."""
    on, off = report["summary"]["shm-on"], report["summary"]["shm-off"]
    lo, hi = off["private_create_mib_range"]
    line = (
        f"{report['model']}: prepack off/on latency b1 x{off['b1_median_ms'] / on['b1_median_ms']:.2f}, "
        f"b32 x{off['b32_median_ms'] / on['b32_median_ms']:.2f}; private growth at create: "
        f"on {on['private_create_mib']:.1f} MiB, off {off['private_create_mib']:.1f} MiB "
        f"(range {lo:.1f}-{hi:.1f})"
    )
    if report["segment_bytes"] >= 10 * MIB:
        per100 = 100 * MIB / report["segment_bytes"]
        line += f" = on {on['private_create_mib'] * per100:.0f} MiB per 100 MiB of weights"
    if contended(report):
        line += "\n  WARNING: best rounds ran with other load on the cores (low cpu/wall)"
    return line


def contended(report: dict[str, Any]) -> bool:
    """True if, at some batch size, a mode's best round got under 80% of the CPU/wall of
    the best-served mode (same work, so a lower ratio means the cores were shared)."""
    for key in (f"b{b}_cpu_per_wall" for b in BATCHES):
        ratios = [s[key] for s in report["summary"].values()]
        if min(ratios) < 0.8 * max(ratios):
            return True
    return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heavy", type=Path, help="heavy model.onnx (generated if omitted)")
    p.add_argument("--digits", type=Path, default=DEFAULT_DIGITS)
    p.add_argument("--budget", type=float, default=1.5, help="seconds of timed calls per batch")
    p.add_argument("--rounds", type=int, default=5, help="fresh subprocesses per mode")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child_main(args: argparse.Namespace) -> int:
    raw = json.loads(args.child.read_text())
    prep = Prepared(**{**raw, "tensors": [Tensor(**t) for t in raw["tensors"]]})
    print(json.dumps(child(prep, args.mode, args.budget)))
    return 0


def report(reports: list[dict[str, Any]], out: Path) -> None:
    print(HEADER)
    for r in reports:
        print("\n".join(table_rows(r)))
    for r in reports:
        print(comparison(r))
        if not r["outputs_agree"]:
            print(f"WARNING: {r['model']}: outputs differ between modes")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(reports, indent=1))
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="falcon-prepack-") as tmp:
        heavy = ensure_heavy(args.heavy, Path(tmp))
        models = {"heavy": heavy, "digits": args.digits}
        reports = [bench_model(n, p, Path(tmp), args) for n, p in models.items()]
    for r in reports:
        r["loadavg_before_after"] = [load_before, os.getloadavg()]
    report(reports, args.out)
    print(f"load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
