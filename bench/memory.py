"""Measure what the stack costs in memory, and how long a daemon restart takes.

Usage::

    python -m bench.memory [--workers 1 8] [--threads 4] [--requests 200]
        [--restarts 3] [--heavy-repo DIR] [--skip-restart] [--out bench/out/memory.json]

Run by hand (not a test); about 35 s on 2 cores. It brings up the real stack
(:class:`falconctl.stack.Stack`: daemon, gunicorn edge, HAProxy) on free loopback ports in
a temp dir, with a unique ``FALCON_DAEMON_SHM_PREFIX``, and stops only what it started.

Part 1, memory: for a repository with only the digits demo and one with the ~245 MB heavy
MLP (generated once into a temp dir, or taken from ``--heavy-repo``), and each edge worker
count, it warms every worker with predict calls (through HAProxy, then straight to the
edge for any worker HAProxy's reused connections did not reach), then sums PSS
(``/proc/PID/smaps_rollup``) over every process of the stack: daemon, gunicorn arbiter and
workers, HAProxy master and worker. The model should be paid once (the daemon's shared
segment), so ``total(8 workers) - total(1 worker)`` should be about 7 x one worker's private
memory whatever the model size. It also checks that no edge process maps libonnxruntime,
and measures what a bare interpreter pays for the edge's imports.

NOTE: PSS splits a shared library's pages among every process on the host that maps it,
so absolute PSS moves with whatever else runs (another ORT process lowers the daemon's);
the private (USS) columns and the 1 -> 8 worker delta are the stable numbers.

Part 2, daemon restart to ready with the heavy model: cold (clean stop, so no segment) and
re-attach (kill -9, segments stay), each timed around ``Stack.start_daemon()`` until the
daemon answers ping ready, next to the load time the daemon logs and the interpreter +
import floor. NOTE: the cold case reads ``model.onnx`` from the page cache (it was just
written or loaded), so it is the parse + publish cost, not disk.

Output: markdown tables on stdout and JSON in ``bench/out/memory.json``. On any exit
(error, Ctrl-C, SIGTERM) the stacks are stopped and no segment with our prefix is left.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import shm
from bench.procs import children, cleaned_up, rollup, stop_on_sigterm
from falconctl.stack import Stack, split_hostport
from tests.modelfactory import write_mlp_model
from tests.stacks import stack_env as test_stack_env

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_OUT = ROOT / "bench" / "out" / "memory.json"
PYTHON = sys.executable
MIB = 1024 * 1024
HEAVY_INPUT = 1024  # heavy MLP: 1024 -> 4 x 4352 -> 10, seed 0 (bench/gen_heavy_model.py)
WIDTH = {"digits": 64, "heavy": HEAVY_INPUT}
EDGE_KINDS = ("edge-arbiter", "edge-worker")
WARM_ROUNDS = 3
DIRECT_MAX_PER_WORKER = 4
SETTLE_S = 1.0
LOADED = re.compile(r"model (\S+) loaded in ([0-9.]+)s \((published|re-attached)[^)]*\)")
IMPORTS = {
    "python -c pass": "",
    "import numpy": "import numpy",
    "import onnxruntime": "import onnxruntime",
    "import onnx, onnxruntime": "import onnx, onnxruntime",
    "import daemon.main (all daemon code)": "import daemon.main",
}
EDGE_IMPORTS = {
    "bare interpreter": "",
    "+ numpy": "import numpy",
    "+ falcon": "import numpy, falcon",
    "+ gunicorn": "import numpy, falcon, gunicorn.app.base, gunicorn.workers.gthread",
    "+ edge.app (all edge code)": "import gunicorn.workers.gthread, edge.app",
}


# ---------------------------------------------------------------- /proc


def maps_has(pid: int, needle: str) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return needle in f.read()


@dataclass
class ProcMem:
    pid: int
    kind: str  # daemon, edge-arbiter, edge-worker, haproxy-master, haproxy-worker
    pss_kb: int
    private_kb: int  # USS: Private_Clean + Private_Dirty
    rss_kb: int
    pss_shmem_kb: int
    pss_anon_kb: int  # heap and other anonymous memory (a private weight copy would land here)
    onnxruntime: bool  # maps libonnxruntime
    numpy: bool  # maps numpy's C extension


def measure(pid: int, kind: str) -> ProcMem:
    r = rollup(pid)
    return ProcMem(
        pid,
        kind,
        r["Pss"],
        r["Private_Clean"] + r["Private_Dirty"],
        r["Rss"],
        r.get("Pss_Shmem", 0),
        r.get("Pss_Anon", 0),
        maps_has(pid, "libonnxruntime"),
        maps_has(pid, "_multiarray_umath"),
    )


def stack_pids(stack: Stack) -> list[tuple[int, str]]:
    daemon = stack.procs["daemon"].popen.pid
    edge = stack.procs["edge"].popen.pid
    haproxy = stack.procs["haproxy"].popen.pid
    return (
        [(daemon, "daemon")]
        + [(p, "daemon-child") for p in children(daemon)]
        + [(edge, "edge-arbiter")]
        + [(p, "edge-worker") for p in children(edge)]
        + [(haproxy, "haproxy-master")]
        + [(p, "haproxy-worker") for p in children(haproxy)]
    )


# ---------------------------------------------------------------- stacks


def stack_env(tmp: Path, repo: Path, prefix: str, workers: int, threads: int) -> dict[str, str]:
    """The tests' stack environment (free loopback ports; API keys off: the warm-up
    sends no key, memory is measured here) with this bench's workers and threads."""
    return test_stack_env(tmp, repo, FALCON_DAEMON_SHM_PREFIX=prefix,
                          FALCON_EDGE_WORKERS=str(workers), FALCON_EDGE_THREADS=str(threads),
                          FALCON_EDGE_METADATA_TTL_S="2.0", FALCON_EDGE_DRAIN_S="2.5")


class Bench:
    """Owns the temp dir, the shm prefix and every stack; :meth:`close` cleans up."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.prefix = f"fbmem{uuid.uuid4().hex[:10]}"
        self.stacks: list[Stack] = []

    def stack(self, repo: Path, workers: int, threads: int) -> Stack:
        n = len(self.stacks)
        tmp = self.tmp / f"stack{n}"
        tmp.mkdir(parents=True)
        env = stack_env(tmp, repo, f"{self.prefix}s{n}", workers, threads)
        stack = Stack(env, tmp / "logs", python=PYTHON)
        self.stacks.append(stack)
        return stack

    def segments(self, stack: Stack | None = None) -> list[str]:
        return shm.list_segments(stack.env["FALCON_DAEMON_SHM_PREFIX"] if stack else self.prefix)

    def close(self) -> list[str]:
        """Stop every stack; unlink and return the segments left behind."""
        for stack in self.stacks:
            stack.stop()
        leaked = self.segments()
        for name in leaked:
            shm.unlink(name)
        return leaked


def segment_bytes(names: list[str]) -> int:
    return sum(os.stat(shm.segment_path(name)).st_size for name in names)


# ---------------------------------------------------------------- load


def post(conn: http.client.HTTPConnection, model: str, body: bytes) -> int:
    conn.request("POST", f"/v1/models/{model}/predict", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def body_for(model: str) -> bytes:
    return json.dumps({"instances": [[0.5] * WIDTH[model]]}).encode()


def send(addr: str, model: str, requests: int, concurrency: int) -> list[int]:
    """``requests`` predict calls, each on a fresh connection, ``concurrency`` at a time."""

    host, port = split_hostport(addr)

    def one(_: int) -> int:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            return post(conn, model, body_for(model))
        finally:
            conn.close()

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(requests)))


def established(port: int) -> set[int]:
    """Socket inodes of established TCP connections whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(int(cols[9]))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def wait_workers(stack: Stack, timeout: float = 60.0) -> list[int]:
    """The edge's worker pids, once gunicorn has forked all of them."""
    want, edge = stack.settings.edge.workers, stack.procs["edge"].popen.pid
    deadline = time.monotonic() + timeout
    while len(kids := children(edge)) < want and time.monotonic() < deadline:
        time.sleep(0.1)
    return kids


def serving(workers: list[int], port: int) -> set[int]:
    """Workers holding an established connection on the edge port."""
    conns = established(port)
    return {p for p in workers if socket_inodes(p) & conns}


def direct_warm(edge: str, model: str, workers: list[int], served: set[int]) -> list[int]:
    """Predict calls straight to the edge, each on a new connection held open, until every
    worker holds one (adds to ``served``). Which idle worker wins an accept is not up to us
    (the same few tend to win), so workers that served are paused with SIGSTOP (they are
    ours) and the next connection can only go to one that has not; all are resumed with
    SIGCONT however we leave."""
    host, port = split_hostport(edge)
    held: list[http.client.HTTPConnection] = []
    statuses: list[int] = []
    stopped: list[int] = []
    try:
        for _ in range(DIRECT_MAX_PER_WORKER * len(workers)):
            for pid in sorted(served - set(stopped)):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            held.append(http.client.HTTPConnection(host, port, timeout=30))
            statuses.append(post(held[-1], model, body_for(model)))
            served |= serving(workers, port)
            if len(served) == len(workers):
                break
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        for conn in held:
            conn.close()
    return statuses


def warm(stack: Stack, model: str, requests: int, concurrency: int) -> dict[str, Any]:
    """Predict calls until every worker served some: through HAProxy first (the real path),
    then, for the workers HAProxy's few reused backend connections never reached (a fast
    model needs only a few), straight to the edge. A worker served predictions if it holds a connection on the edge port:
    HAProxy keeps its backend connections alive for reuse; health checks close theirs."""
    edge, workers = stack.settings.edge.bind, wait_workers(stack)
    statuses: list[int] = []
    served: set[int] = set()
    for _ in range(WARM_ROUNDS):
        statuses += send(stack.settings.haproxy.bind, model, requests, concurrency)
        served |= serving(workers, split_hostport(edge)[1])
        if len(served) == len(workers):
            break
    via_haproxy = len(served)
    if len(served) < len(workers):
        statuses += direct_warm(edge, model, workers, served)
    counts = {s: statuses.count(s) for s in set(statuses)}
    if not counts.get(200):  # e.g. 401: nothing was computed, the numbers would mean nothing
        raise RuntimeError(f"warm-up of {model} got no 200: {counts}")
    return {
        "statuses": counts,
        "workers": len(workers),
        "served": len(served),
        "served_via_haproxy": via_haproxy,
    }


# ---------------------------------------------------------------- part 1


@dataclass
class Case:
    model: str
    workers: int
    segment_bytes: int
    warm: dict[str, Any]
    procs: list[ProcMem] = field(default_factory=list)

    def kb(self, *kinds: str, key: str = "pss_kb") -> int:
        return sum(getattr(p, key) for p in self.procs if p.kind in kinds)

    @property
    def total_kb(self) -> int:
        return self.kb(*{p.kind for p in self.procs})

    @property
    def edge_workers(self) -> list[ProcMem]:
        return [p for p in self.procs if p.kind == "edge-worker"]


def warm_note(w: dict[str, Any]) -> str:
    return (
        f"{w['served']} of {w['workers']} workers served predictions "
        f"({w['served_via_haproxy']} through HAProxy); HTTP statuses {w['statuses']}"
    )


def run_case(bench: Bench, repo: Path, model: str, workers: int, args: argparse.Namespace) -> Case:
    stack = bench.stack(repo, workers, args.threads)
    started = time.perf_counter()
    stack.start()
    up = time.perf_counter() - started
    try:
        warm_info = warm(stack, model, args.requests, args.concurrency)
        print(
            f"  {model}, {workers} worker(s): up in {up:.1f}s; {warm_note(warm_info)}", flush=True
        )
        time.sleep(SETTLE_S)
        case = Case(
            model,
            workers,
            segment_bytes(bench.segments(stack)),
            warm_info,
            [measure(pid, kind) for pid, kind in stack_pids(stack)],
        )
    finally:
        stack.stop()
    if bench.segments(stack):
        raise RuntimeError(f"segments left after a clean stop: {bench.segments(stack)}")
    return case


def edge_import_cost() -> dict[str, dict[str, int]]:
    """USS and PSS of a fresh interpreter after the edge's imports (cwd = repo root)."""
    probe = (
        "import re\n{imp}\nd = {{}}\nfor line in open('/proc/self/smaps_rollup'):\n"
        "    k, _, v = line.partition(':')\n    p = v.split()\n"
        "    if len(p) == 2: d[k] = int(p[0])\n"
        "print(d['Private_Clean'] + d['Private_Dirty'], d['Pss'])"
    )
    out = {}
    for label, imp in EDGE_IMPORTS.items():
        res = subprocess.run(
            [PYTHON, "-c", probe.format(imp=imp)],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        uss, pss = res.stdout.split()
        out[label] = {"private_kb": int(uss), "pss_kb": int(pss)}
    return out


# ---------------------------------------------------------------- part 2


@dataclass
class Restart:
    mode: str  # cold | re-attach
    seconds: float  # start_daemon() until ping ready
    load_seconds: float  # what the daemon logged for the model
    how: str  # published | re-attached (from the log)


def timed_start(stack: Stack, mode: str) -> Restart:
    started = time.perf_counter()
    proc = stack.start_daemon()
    seconds = time.perf_counter() - started
    found = LOADED.findall(proc.tail(60))
    if not found:
        raise RuntimeError(f"no 'loaded in' line in the daemon log:\n{proc.tail()}")
    _, load_s, how = found[-1]
    return Restart(mode, seconds, float(load_s), how)


def restarts(bench: Bench, repo: Path, rounds: int) -> list[Restart]:
    """cold (no segment) then re-attach (after kill -9), ``rounds`` times."""
    stack = bench.stack(repo, 1, 1)
    out = []
    try:
        for i in range(rounds):
            if bench.segments(stack):
                raise RuntimeError(f"cold start with segments present: {bench.segments(stack)}")
            out.append(timed_start(stack, "cold"))
            stack.procs.pop("daemon").stop(signal.SIGKILL)
            if not bench.segments(stack):
                raise RuntimeError("kill -9 left no segment to re-attach to")
            out.append(timed_start(stack, "re-attach"))
            stack.stop()  # SIGTERM: drains, unlinks its segments
            print(
                f"  round {i + 1}: cold {out[-2].seconds:.2f}s, re-attach {out[-1].seconds:.2f}s",
                flush=True,
            )
    finally:
        stack.stop()
    return out


def import_floor(repeats: int) -> dict[str, float]:
    """Median wall time of ``python -c IMPORT`` (cwd = repo root)."""
    out = {}
    for label, code in IMPORTS.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([PYTHON, "-c", code or "pass"], cwd=ROOT, check=True)
            times.append(time.perf_counter() - started)
        out[label] = statistics.median(times)
    return out


# ---------------------------------------------------------------- tables


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def case_table(cases: list[Case]) -> str:
    rows = [
        "| model | edge workers | shm segment MB | daemon PSS MB (shm / anon) | "
        "edge arbiter MB | edge workers MB (each: PSS / private) | haproxy MB | total PSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        w = c.edge_workers
        each = (
            (
                f"{mb(statistics.mean(p.pss_kb for p in w))} / "
                f"{mb(statistics.mean(p.private_kb for p in w))}"
            )
            if w
            else "-"
        )
        rows.append(
            f"| {c.model} | {c.workers} | {c.segment_bytes / MIB:.1f} | "
            f"{mb(c.kb('daemon', 'daemon-child'))} ({mb(c.kb('daemon', key='pss_shmem_kb'))} / "
            f"{mb(c.kb('daemon', 'daemon-child', key='pss_anon_kb'))}) | "
            f"{mb(c.kb('edge-arbiter'))} | {mb(c.kb('edge-worker'))} ({each}) | "
            f"{mb(c.kb('haproxy-master', 'haproxy-worker'))} | {mb(c.total_kb)} |"
        )
    return "\n".join(rows)


def delta_table(cases: list[Case]) -> str:
    lo, hi = min(c.workers for c in cases), max(c.workers for c in cases)
    extra = hi - lo
    rows = [
        f"| model | total, {lo} worker MB | total, {hi} workers MB | delta MB | "
        f"of it edge MB | delta / {extra} MB | {extra} x worker private ({hi}-worker run) MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model in dict.fromkeys(c.model for c in cases):
        a = next(c for c in cases if c.model == model and c.workers == lo)
        b = next(c for c in cases if c.model == model and c.workers == hi)
        d = b.total_kb - a.total_kb
        edge = b.kb(*EDGE_KINDS) - a.kb(*EDGE_KINDS)
        priv = statistics.mean(p.private_kb for p in b.edge_workers)
        rows.append(
            f"| {model} | {mb(a.total_kb)} | {mb(b.total_kb)} | {mb(d)} | {mb(edge)} | "
            f"{mb(d / max(extra, 1))} | {mb(extra * priv)} |"
        )
    return "\n".join(rows)


def import_cost_table(cost: dict[str, dict[str, int]]) -> str:
    rows = ["| fresh interpreter | private (USS) MB | PSS MB |", "|---|---:|---:|"]
    rows += [f"| {k} | {mb(v['private_kb'])} | {mb(v['pss_kb'])} |" for k, v in cost.items()]
    return "\n".join(rows)


def restart_table(runs: list[Restart]) -> str:
    rows = [
        "| daemon start (heavy) | runs | to ready, median s | min s | "
        "model load (daemon log), median s | rest (interpreter, imports, socket), median s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in ("cold", "re-attach"):
        rs = [r for r in runs if r.mode == mode]
        how = "/".join(sorted({r.how for r in rs}))
        rows.append(
            f"| {mode} ({how}) | {len(rs)} | "
            f"{statistics.median(r.seconds for r in rs):.2f} | "
            f"{min(r.seconds for r in rs):.2f} | "
            f"{statistics.median(r.load_seconds for r in rs):.3f} | "
            f"{statistics.median(r.seconds - r.load_seconds for r in rs):.2f} |"
        )
    return "\n".join(rows)


def floor_table(floor: dict[str, float]) -> str:
    rows = ["| `python -c ...` | median s |", "|---|---:|"]
    rows += [f"| {k} | {v:.2f} |" for k, v in floor.items()]
    return "\n".join(rows)


def edge_maps_note(cases: list[Case]) -> str:
    edge = [p for c in cases for p in c.procs if p.kind.startswith("edge")]
    ort = sum(p.onnxruntime for p in edge)
    npy = sum(p.numpy for p in edge if p.kind == "edge-worker")
    workers = sum(p.kind == "edge-worker" for p in edge)
    return (
        f"edge processes mapping libonnxruntime: {ort} of {len(edge)}; "
        f"edge workers mapping numpy: {npy} of {workers}"
    )


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--requests", type=int, default=200, help="warm-up predict calls per round")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--heavy-repo", type=Path, help="a repository that already holds heavy/")
    p.add_argument("--skip-restart", action="store_true")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def digits_repo(tmp: Path) -> Path:
    repo = tmp / "repo-digits"
    shutil.copytree(
        ROOT / "models" / "digits",
        repo / "digits",
        ignore=shutil.ignore_patterns("*.py", "example.json"),
    )
    return repo


def heavy_repo(tmp: Path, given: Path | None) -> Path:
    if given is not None:
        repo = tmp / "repo-heavy"
        repo.mkdir()
        (repo / "heavy").symlink_to((given / "heavy").resolve())
        return repo
    started = time.perf_counter()
    path = write_mlp_model(
        tmp / "repo-heavy",
        "heavy",
        input_dim=HEAVY_INPUT,
        hidden=4352,
        layers=4,
        classes=10,
        seed=0,
    )
    print(
        f"generated {path.stat().st_size / 1e6:.0f} MB heavy model in "
        f"{time.perf_counter() - started:.1f}s",
        flush=True,
    )
    return tmp / "repo-heavy"


def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    repos = {"digits": digits_repo(bench.tmp), "heavy": heavy_repo(bench.tmp, args.heavy_repo)}
    print("part 1: memory", flush=True)
    cases = [
        run_case(bench, repo, model, w, args)
        for model, repo in repos.items()
        for w in sorted(set(args.workers))
    ]
    result: dict[str, Any] = {"cases": cases, "edge_import_cost": edge_import_cost()}
    if not args.skip_restart:
        print("part 2: daemon restart (heavy)", flush=True)
        result["restarts"] = restarts(bench, repos["heavy"], args.restarts)
        result["import_floor"] = import_floor(args.restarts)
    return result


def report(result: dict[str, Any], argv: list[str]) -> None:
    cmd = " ".join([".venv/bin/python", "-m", "bench.memory", *argv])
    cases = result["cases"]
    print(f"\n### Stack memory (PSS), produced by `{cmd}`\n")
    print(case_table(cases), "\n")
    if len({c.workers for c in cases}) > 1:
        print(delta_table(cases), "\n")
    print(edge_maps_note(cases), "\n")
    print(import_cost_table(result["edge_import_cost"]))
    if "restarts" in result:
        print(f"\n### Daemon restart to ready, produced by `{cmd}`\n")
        print(restart_table(result["restarts"]), "\n")
        print(floor_table(result["import_floor"]))


def save(result: dict[str, Any], out: Path) -> None:
    doc = {
        k: ([asdict(x) for x in v] if k in ("cases", "restarts") else v) for k, v in result.items()
    }
    for case, raw in zip(result["cases"], doc["cases"], strict=True):
        raw["total_pss_kb"] = case.total_kb
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out}")


@contextmanager
def bench_context() -> Iterator[Bench]:
    """A Bench whose stacks are stopped and segments unlinked however we leave."""
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="falcon-bench-memory-") as tmp, \
            cleaned_up(Bench(Path(tmp))) as bench:
        yield bench


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.perf_counter()
    with bench_context() as bench:
        result = run(bench, args)
    report(result, argv)
    save(result, args.out)
    print(f"total {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
