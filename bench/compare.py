"""Side-by-side benchmark: this platform against the obvious designs, one run, one table.

Usage (``make bench`` runs it with the defaults)::

    python -m bench.compare [--models digits heavy] [--connections 16 64] [--duration 10]
        [--warmup 3] [--workers 2] [--threads 32] [--fixed-seconds 10] [--rate MODEL=R ...]
        [--contenders platform seed seed-sync dirty floor] [--out bench/out/compare.json]

Contenders, each on free loopback ports behind the SAME HAProxy config
(``ops/haproxy/haproxy.cfg`` via :meth:`Stack.start_haproxy`, its ``FALCON_EDGE_ADDR``
pointing at the contender; server maxconn = workers x threads for all), ``--workers``
processes each:

- ``platform``, as it ships (``falconctl up`` without the shipper): daemon + gunicorn/Falcon
  edge (``--threads`` per worker), API keys on, audit on with its default durability (WAL,
  ``sync = batch``), a memcached of its own and the prediction cache as each model's
  config says (digits: off; heavy: on, the default), the daemon's batching defaults;
- ``seed``, the async seed: FastAPI + uvicorn, an ``async def`` handler running ONNX Runtime
  inline on the event loop, one intra-op and one inter-op thread per worker, each worker
  embedding the model (``bench/contenders/seed_app.py:async_seed``);
- ``seed-sync``: the same with a plain ``def`` handler (FastAPI's thread pool, a hop per
  request) and ONNX Runtime's default threads (``seed_app.py:sync_seed``): the seed as this
  bench ran it before issue 13;
- ``dirty``: gunicorn 27's dirty arbiter, one dirty worker holding the model, a Falcon
  handler on gthread workers calling it (``bench/contenders/falcon_apps.py``);
- ``floor``: gunicorn (``--floor-class``, gevent like the platform's edge by default) + a
  Falcon handler that parses the JSON and answers a constant;
- ``ceiling``: ONNX Runtime in-process, default threads, no HTTP
  (``bench/contenders/ceiling.py``): batch 1 and the best of a few batch sizes (rows/s).

Models: the digits demo and the ~245 MB heavy MLP (1024 -> 4 x 4352 -> 10, generated
into a temp dir). Load: ``wrk -t2 -cN -dD --timeout 10s --latency`` with a Lua script that
POSTs one row per request; the bench's API key (``falconctl keys create``, class ``bench``
whose per-key limit no run reaches; HAProxy still checks it) goes to every contender as
``Authorization: Bearer``. Every request's row is distinct (its first value is
``1 + k / 2**23``, k never repeated within a stack), so a prediction cache never hits: it
costs its misses and gives nothing back. Every contender gets the same rows. Errors =
non-2xx + socket errors. PSS is summed over the whole process tree of everything the
contender started (HAProxy included), measured right after its last run.

CPU per request: over each load run, the user + system CPU time (``/proc/PID/stat``) of each
process group the contender started (the root and all its descendants: ``edge`` is the app
server, gunicorn or uvicorn, with its workers; ``daemon``, ``memcached`` and ``haproxy``
where they run), divided by the requests answered, in microseconds; ``total`` is their sum.

Fixed offered rate (the fair p99): after its wrk runs, every contender also gets
``--fixed-seconds`` of open-loop load from ``bench/openloop.py`` at the SAME rate, half the
seed's best req/s on that model (the seed runs first to measure it; ``--rate
MODEL=R`` sets it by hand; capacity counts 2xx answers only). Its latencies run from each
request's due time (coordinated omission corrected, as wrk2 does; wrk2 is not packaged in
Debian). The table shows these rows as ``fixed R/s`` in the connections column.

Output: a markdown table on stdout, then issue 13's goals judged from this run
(``bench/goals.py``), ``bench/out/compare.json`` (the CPU per request and the verdicts
included) and ``bench/out/compare.png``. Every process started is stopped by pid; temp
dirs are removed; no shared-memory segment with our prefix is left behind, even on an
error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import shm
from bench.goals import verdicts
from bench.loadrun import Load, template, with_cpu
from bench.procs import cleaned_up, descendants, pss_kb, stop_on_sigterm
from falconctl.hosts import servers
from falconctl.stack import Stack, free_port, http_status, split_hostport
from tests.modelfactory import write_mlp_model

ROOT = Path(__file__).resolve().parent.parent

PYTHON = sys.executable
OUT = ROOT / "bench" / "out" / "compare.json"
HEAVY_INPUT = 1024
CONTENDERS = ("platform", "seed", "seed-sync", "dirty", "floor")
CEILING_BATCHES = {"digits": [1, 8, 32, 128], "heavy": [1, 8, 32, 64]}
GROUPS = ("edge", "daemon", "memcached", "haproxy")  # CPU columns (Stack.procs names)
KEY_CLASS = "bench"  # the bench key's rate-limit class (haproxy.key_classes)
KEY_CLASS_LIMIT = 100_000_000  # requests per window: no run comes near it
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- runs


@dataclass
class Run:
    contender: str
    model: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    answered: int = 0  # responses received (any status): what CPU per request divides by
    pss_mb: float = 0.0
    procs: int = 0
    offered_rps: float = 0.0  # > 0: a fixed-offered-rate run (bench/openloop.py)
    late_sends: int = 0  # requests the open-loop generator sent > 5 ms late
    cpu_s: dict[str, float] = field(default_factory=dict)  # group -> user + system s
    settled_s: float = 0.0  # waited before the run for HAProxy to see the servers UP
    seconds: float = 0.0  # the load run's length as wrk reports it (bench/loadrun.py)
    socket_error_kinds: dict[str, int] = field(default_factory=dict)  # connect, read, ...

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors

    @property
    def ok_rps(self) -> float:
        """Answers per second that were 2xx (a 503 storm is not capacity)."""
        return self.rps * (self.requests - self.non2xx) / self.requests if self.requests else 0.0

    def cpu_us(self, group: str = "") -> float | None:
        """CPU microseconds per answered request of one group ("": all of them);
        None if this contender has no such process."""
        if group and group not in self.cpu_s:
            return None
        spent = self.cpu_s[group] if group else sum(self.cpu_s.values())
        return 1e6 * spent / self.answered if self.answered else None


# ---------------------------------------------------------------- contenders


@dataclass
class Bench:
    tmp: Path
    workers: int
    threads: int
    stacks: list[Stack] = field(default_factory=list)
    started: int = 0
    env: dict[str, str] = field(default_factory=dict)  # FALCON_* overrides (platform)
    floor_class: str = "gevent"  # the floor's gunicorn worker class
    key: str = ""  # the bench's API key (create_key), sent to every contender

    def base_env(self, tmp: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FALCON_")}
        env.update({
            "FALCON_CONFIG": str(tmp / "falcon.toml"),
            "FALCON_PATHS_RUN_DIR": str(tmp / "run"),
            "FALCON_PATHS_STATE_DIR": str(tmp / "state"),
            "FALCON_AUTH_KEYS_FILE": str(self.tmp / "keys.json"),
            "FALCON_HAPROXY_KEY_CLASSES": f"{KEY_CLASS}={KEY_CLASS_LIMIT}",
            "PYTHONPATH": str(ROOT),
        })
        (tmp / "falcon.toml").write_text("# bench/compare.py configures everything via the env\n")
        return env

    def create_key(self) -> str:
        """One API key (scope predict, class ``bench``) in the keys file every stack
        shares, made with ``falconctl keys create`` as an operator would."""
        tmp = self.tmp / "keys"
        (tmp / "run").mkdir(parents=True)
        res = subprocess.run([PYTHON, "-m", "falconctl", "keys", "create", "--name", "bench",
                              "--class", KEY_CLASS], env=self.base_env(tmp), cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0 or not res.stdout.strip():
            raise RuntimeError(f"falconctl keys create failed: {res.stderr}")
        self.key = res.stdout.strip().splitlines()[-1]
        return self.key

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def stack(self, name: str, repo: Path) -> Stack:
        self.started += 1
        tmp = self.tmp / f"{name}-{self.started}"
        tmp.mkdir(parents=True)
        env = self.base_env(tmp)
        env.update({
            "FALCON_DAEMON_MODEL_REPOSITORY": str(repo),
            "FALCON_DAEMON_SHM_PREFIX": f"fbench{uuid.uuid4().hex[:10]}",
            "FALCON_EDGE_BIND": f"127.0.0.1:{free_port()}",
            "FALCON_EDGE_WORKERS": str(self.workers),
            "FALCON_EDGE_THREADS": str(self.threads),
            "FALCON_HAPROXY_BIND": f"127.0.0.1:{free_port()}",
            "FALCON_HAPROXY_STATS_BIND": f"127.0.0.1:{free_port()}",
            # HAProxy's gRPC frontend too: the default 8081 may be another stack's
            "FALCON_GRPC_PUBLIC_BIND": f"127.0.0.1:{free_port()}",
        })
        env.update(self.env)
        stack = Stack(env, tmp / "logs", python=PYTHON)
        self.stacks.append(stack)
        return stack

    def close(self) -> list[str]:
        leaked = []
        for stack in self.stacks:
            stack.stop()
            for name in shm.list_segments(stack.env["FALCON_DAEMON_SHM_PREFIX"]):
                leaked.append(name)
                shm.unlink(name)
        self.stacks.clear()
        return leaked


def start_app(stack: Stack, argv: list[str], model: str, model_path: Path) -> None:
    """Start a contender's server as the stack's "edge" (so Stack.stop stops it, SIGTERM)."""
    proc = stack._spawn("edge", argv, {"BENCH_MODEL_NAME": model,
                                       "BENCH_MODEL_PATH": str(model_path)})
    host, port = split_hostport(stack.env["FALCON_EDGE_BIND"])
    stack._wait(proc, lambda: http_status(host, port, "/v2/health/ready") == 200, 180.0)


SEEDS = {"seed": "async_seed", "seed-sync": "sync_seed"}  # bench/contenders/seed_app.py


def start(contender: str, bench: Bench, repo: Path, model: str) -> Stack:
    stack = bench.stack(contender, repo)
    _, port = split_hostport(stack.env["FALCON_EDGE_BIND"])
    w, t = str(bench.workers), str(bench.threads)
    gunicorn = [PYTHON, "-m", "gunicorn", "-w", w, "-k", "gthread", "--threads", t,
                "--keep-alive", "30", "-b", f"127.0.0.1:{port}", "--log-level", "warning"]
    model_path = repo / model / "1" / "model.onnx"
    try:
        if contender == "platform":  # as `falconctl up` runs it, without the shipper
            stack.start_memcached()
            stack.start_daemon()
            stack.start_edge()
        elif contender in SEEDS:
            start_app(stack, [PYTHON, "-m", "uvicorn", "--factory",
                              f"bench.contenders.seed_app:{SEEDS[contender]}",
                              "--host", "127.0.0.1", "--port", str(port), "--workers", w,
                              "--timeout-keep-alive", "30", "--log-level", "warning",
                              "--no-access-log"], model, model_path)
        elif contender == "dirty":
            start_app(stack, [*gunicorn, "--dirty-app", "bench.contenders.falcon_apps:OnnxApp",
                              "--dirty-workers", "1", "--dirty-timeout", "10",
                              "bench.contenders.falcon_apps:dirty"], model, model_path)
        elif contender == "floor":
            argv = {"gthread": gunicorn,
                    "gevent": [PYTHON, "-m", "gunicorn", "-w", w, "-k", "gevent",
                               "--worker-connections", "1000", "--keep-alive", "30",
                               "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
                    "sync": [PYTHON, "-m", "gunicorn", "-w", w, "-k", "sync",
                             "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
                    }[bench.floor_class]
            start_app(stack, [*argv, "bench.contenders.falcon_apps:floor"], model, model_path)
        else:
            raise ValueError(contender)
        stack.start_haproxy()
    except BaseException:
        stack.stop()
        raise
    return stack


def check(url: str, body: Path, headers: dict[str, str]) -> None:
    """One request must answer 200 (else the numbers would measure errors)."""
    res = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          "-H", "Content-Type: application/json",
                          *(a for k, v in headers.items() for a in ("-H", f"{k}: {v}")),
                          "--data-binary", f"@{body}", url],
                         capture_output=True, text=True, timeout=30)
    if res.stdout.strip() != "200":
        raise RuntimeError(f"{url} answered {res.stdout!r}")


def memcached_stats(stack: Stack) -> dict[str, int]:
    """get_hits / get_misses of the stack's own memcached ({} without one)."""
    if "memcached" not in stack.procs:
        return {}
    host, port = split_hostport(stack.env["FALCON_CACHE_SERVERS"])
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    stats = dict(line.split()[1:3] for line in data.decode().splitlines()
                 if line.startswith("STAT "))
    return {k: int(stats[k]) for k in ("get_hits", "get_misses") if k in stats}


def settle(stack: Stack, timeout: float = 15.0) -> float:
    """Wait until HAProxy sees every server of the backend UP; the seconds waited. A
    contender that could not answer its health checks under the last run (the async
    seed's loop busy with heavy inferences: a 1 s check timeout, ``fall 2``) is DOWN
    for a while and gets 503s: each run starts from a healthy backend, so a run does
    not measure the recovery from the one before it."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(r["status"].startswith("UP") for r in servers(stack.settings)):
            break
        time.sleep(0.1)
    waited = time.monotonic() - started
    if waited > 0.5:
        log(f"  waited {waited:.1f}s for HAProxy to see every server UP")
    return waited


def measure(contender: str, bench: Bench, repo: Path, model: str, body: Path, load: Load,
            args: argparse.Namespace) -> list[Run]:
    started = time.perf_counter()
    stack = start(contender, bench, repo, model)
    runs = []
    try:
        url = f"http://{stack.env['FALCON_HAPROXY_BIND']}/v1/models/{model}/predict"
        check(url, body, bench.headers)
        log(f"  {contender}/{model}: up in {time.perf_counter() - started:.1f}s")
        if args.warmup:
            load.wrk(url, min(args.connections), args.warmup)
        for c in args.connections:
            waited = settle(stack)
            r = Run(contender, model, c, settled_s=waited,
                    **with_cpu(stack, partial(load.wrk, url, c, args.duration)))
            runs.append(r)
            log(f"  {contender}/{model} c={c}: {r.rps:.0f} req/s, p50 {r.p50_ms:.1f} ms, "
                f"p99 {r.p99_ms:.1f} ms, errors {r.errors}, {r.cpu_us() or 0:,.0f} CPU µs/req")
        if contender == "seed" and not args.rate.get(model):
            args.rate[model] = max(r.ok_rps for r in runs) / 2  # half the seed's capacity
        rate = args.rate.get(model)
        if rate and args.fixed_seconds:
            r = Run(contender, model, settled_s=settle(stack), **with_cpu(
                stack, lambda: load.openloop(url, rate, args.fixed_seconds)))
            runs.append(r)
            log(f"  {contender}/{model} fixed {rate:.0f}/s: {r.rps:.0f} req/s, p50 "
                f"{r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, errors {r.errors}, "
                f"{r.connections} connections, {r.late_sends} sent late, "
                f"{r.cpu_us() or 0:,.0f} CPU µs/req")
        pids = descendants([p.popen.pid for p in stack.procs.values()])
        total = sum(pss_kb(p) for p in pids) / 1024
        for r in runs:
            r.pss_mb, r.procs = total, len(pids)
        cache = memcached_stats(stack)
        log(f"  {contender}/{model}: PSS {total:.0f} MB over {len(pids)} processes"
            + (f"; memcached {cache}" if cache else ""))
    finally:
        stack.stop()
        bench.stacks.remove(stack)
        if contender == "platform":
            for name in shm.list_segments(stack.env["FALCON_DAEMON_SHM_PREFIX"]):
                shm.unlink(name)
                raise RuntimeError(f"segment left after a clean stop: {name}")
    return runs


def ceiling(repo: Path, model: str, body: Path, seconds: float) -> dict[str, Any]:
    argv = [PYTHON, "-m", "bench.contenders.ceiling", str(repo / model / "1" / "model.onnx"),
            str(body), str(seconds), *map(str, CEILING_BATCHES[model])]
    res = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    best = max(doc["runs"], key=lambda r: r["rows_per_s"])
    doc.update(model=model, batch1=doc["runs"][0]["calls_per_s"], best_batch=best["batch"],
               best_rows_per_s=best["rows_per_s"])
    log(f"  ceiling/{model}: batch 1 {doc['batch1']:.0f} calls/s; best batch {best['batch']} "
        f"{best['rows_per_s']:.0f} rows/s; PSS {doc['pss_kb'] / 1024:.0f} MB")
    return doc


# ---------------------------------------------------------------- models


def repos(tmp: Path, models: list[str], prepack: bool = False,
          inexact: bool = False) -> dict[str, tuple[Path, Path]]:
    """{model: (repository, body.json)}, the body being one row in the v1 JSON shape.
    ``prepack``: the heavy model's config says ``prepack = true`` (the daemon then
    lets ONNX Runtime prepack its weights: faster, one private copy). ``inexact``:
    its ``[batching] exact = false`` (a lone row runs unpadded)."""
    out = {}
    if "digits" in models:
        repo = tmp / "repo-digits"
        shutil.copytree(ROOT / "models" / "digits", repo / "digits",
                        ignore=shutil.ignore_patterns("*.py", "example.json"))
        doc = json.loads((ROOT / "models" / "digits" / "example.json").read_text())
        body = tmp / "body-digits.json"
        body.write_text(json.dumps({"instances": doc["instances"][:1]}))
        out["digits"] = (repo, body)
    if "heavy" in models:
        import numpy as np

        started = time.perf_counter()
        path = write_mlp_model(tmp / "repo-heavy", "heavy", input_dim=HEAVY_INPUT, hidden=4352,
                               layers=4, classes=10, seed=0)
        if prepack:
            config = path.parent.parent / "config.toml"
            config.write_text(config.read_text().replace("prepack = false", "prepack = true"))
        if inexact:
            config = path.parent.parent / "config.toml"
            config.write_text(config.read_text() + "\n[batching]\nexact = false\n")
        log(f"generated heavy model ({path.stat().st_size / 1e6:.0f} MB) in "
            f"{time.perf_counter() - started:.1f}s")
        row = np.random.default_rng(0).standard_normal(HEAVY_INPUT).round(4).tolist()
        body = tmp / "body-heavy.json"
        body.write_text(json.dumps({"instances": [row]}))
        out["heavy"] = (tmp / "repo-heavy", body)
    return out


# ---------------------------------------------------------------- report


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def table(runs: list[Run], ceilings: list[dict[str, Any]]) -> str:
    cpu = " | ".join(f"{g} µs/req" for g in GROUPS)
    rows = [f"| contender | model | connections | req/s | p50 ms | p99 ms | errors | {cpu} | "
            "total µs/req | total PSS MB (processes) |",
            "|---|---|---:|---:|---:|---:|---:|" + "---:|" * (len(GROUPS) + 2)]
    for r in runs:
        conns = f"fixed {r.offered_rps:,.0f}/s" if r.offered_rps else str(r.connections)
        cpu = " | ".join(_us(r.cpu_us(g)) for g in GROUPS)
        rows.append(f"| {r.contender} | {r.model} | {conns} | {r.rps:,.0f} | "
                    f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} | {cpu} | {_us(r.cpu_us())} | "
                    f"{r.pss_mb:,.0f} ({r.procs}) |")
    dashes = " | ".join("-" * (len(GROUPS) + 1))
    for c in ceilings:
        rows.append(f"| ceiling, batch 1 (calls/s) | {c['model']} | - | {c['batch1']:,.0f} | - | "
                    f"- | - | {dashes} | {c['pss_kb'] / 1024:,.0f} (1) |")
        rows.append(f"| ceiling, batch {c['best_batch']} (rows/s) | {c['model']} | - | "
                    f"{c['best_rows_per_s']:,.0f} | - | - | - | {dashes} | "
                    f"{c['pss_kb'] / 1024:,.0f} (1) |")
    return "\n".join(rows)


def plot(runs: list[Run], ceilings: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in runs))
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for j, model in enumerate(models):
        mine = [r for r in runs if r.model == model]
        labels = [f"{r.contender}\n" + (f"{r.offered_rps:.0f}/s" if r.offered_rps
                                         else f"c={r.connections}") for r in mine]
        colors = [f"C{CONTENDERS.index(r.contender)}" for r in mine]
        ax = axes[0][j]
        ax.bar(labels, [r.rps for r in mine], color=colors)
        for c in ceilings:
            if c["model"] == model:
                ax.axhline(c["batch1"], ls=":", color="k", label="ceiling, batch 1")
                ax.axhline(c["best_rows_per_s"], ls="--", color="k",
                           label=f"ceiling, batch {c['best_batch']} (rows/s)")
                ax.legend(fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"{model}: req/s (log; ceiling lines in rows/s)")
        ax.tick_params(axis="x", labelsize=7)
        ax = axes[1][j]
        ax.bar(labels, [r.p99_ms for r in mine], color=colors)
        ax.set_yscale("log")
        ax.set_title(f"{model}: p99 ms (log)")
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- main


@contextmanager
def bench_context(workers: int, threads: int) -> Iterator[Bench]:
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="falcon-bench-compare-") as tmp, \
            cleaned_up(Bench(Path(tmp), workers, threads)) as bench:
        bench.create_key()
        yield bench


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["digits", "heavy"], choices=["digits", "heavy"])
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--connections", nargs="+", type=int, default=[16, 64])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of wrk before measuring")
    p.add_argument("--fixed-seconds", type=float, default=10.0,
                   help="seconds of the fixed-offered-rate run (0: none)")
    p.add_argument("--rate", nargs="*", default=[], metavar="MODEL=REQ_PER_S",
                   help="fixed offered rate per model (default: half the seed's best req/s, "
                        "measured first in the same run)")
    p.add_argument("--ceiling-seconds", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=32,
                   help="requests in flight per edge worker (the platform's edge.threads: "
                        "greenlets under gevent; the gthread contenders' threads)")
    p.add_argument("--floor-class", choices=("gevent", "gthread", "sync"), default="gevent",
                   help="the floor's gunicorn worker class (the platform's edge runs gevent; "
                        "sync: one request per worker, "
                        "every connection closed; pair it with --threads 1 so HAProxy's "
                        "server maxconn is the worker count)")
    p.add_argument("--prepack", action="store_true",
                   help="heavy model with prepack = true (a private prepacked copy in the daemon)")
    p.add_argument("--inexact", action="store_true",
                   help="heavy model with [batching] exact = false (a lone row runs unpadded)")
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.rate = {m: float(r) for m, r in (kv.split("=", 1) for kv in args.rate)}
    # the seed first: its capacity sets the fixed offered rate of every contender
    args.contenders.sort(key=lambda c: c != "seed")
    os.chdir(ROOT)
    started = time.perf_counter()
    runs: list[Run] = []
    ceilings: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    load_start = os.getloadavg()
    with bench_context(args.workers, args.threads) as bench:
        bench.floor_class = args.floor_class
        for model, (repo, body) in repos(bench.tmp, args.models, args.prepack,
                                           args.inexact).items():
            log(f"model {model}")
            load = Load(template(body), bench.headers, bench.tmp)
            ceilings.append(ceiling(repo, model, body, args.ceiling_seconds))
            for contender in args.contenders:
                try:
                    runs += measure(contender, bench, repo, model, body, load, args)
                except Exception as exc:  # one broken contender must not hide the others
                    failures[f"{contender}/{model}"] = str(exc)[-2000:]
                    log(f"  {contender}/{model} FAILED: {str(exc)[-500:]}")
    cmd = " ".join(["python", "-m", "bench.compare", *argv])
    load_end = os.getloadavg()
    print(f"\n### Side by side, `{cmd}`, {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores, {args.workers} workers, wrk -t2 {args.duration:g}s "
          f"(load average at the start {load_start[0]:.1f}, at the end {load_end[0]:.1f})\n")
    print(table(runs, ceilings))
    goals = verdicts(runs, ceilings)
    print("\n#### Goals (issue 13), as ratios from this run\n")
    print("\n".join(g.line() for g in goals))
    for name, err in failures.items():
        print(f"\nFAILED {name}: {err}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": cmd, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args),
           "runs": [asdict(r) | {"errors": r.errors, "cpu_us_per_request": {
               **{g: r.cpu_us(g) for g in r.cpu_s}, "total": r.cpu_us()}} for r in runs],
           "ceiling": ceilings, "goals": [asdict(g) for g in goals],
           "failures": failures, "loadavg_start": load_start, "loadavg_end": load_end}
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    png = args.out.with_suffix(".png")
    if runs:
        plot(runs, ceilings, png)
    print(f"\nwrote {args.out} and {png}; total {time.perf_counter() - started:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
