"""Side-by-side benchmark: this platform against the obvious designs, one run, one table.

Usage (``make bench`` runs it with the defaults)::

    python bench/compare.py [--models digits heavy] [--connections 16 64] [--duration 10]
        [--warmup 3] [--workers 2] [--threads 32] [--fixed-seconds 10] [--rate MODEL=R ...]
        [--out bench/out/compare.json]

Contenders, each on free loopback ports behind the SAME HAProxy config
(``ops/haproxy/haproxy.cfg`` via :meth:`Stack.start_haproxy`, its ``FALCON_EDGE_ADDR``
pointing at the contender; server maxconn = workers x threads for all):

- ``platform``: daemon + gunicorn/Falcon edge (gthread, ``--workers`` x ``--threads``),
  API keys off, cache off, audit on as shipped (WAL, ``sync = batch``; no shipper running),
  the daemon's dynamic batching with the model's defaults;
- ``seed``: FastAPI + uvicorn, ``--workers`` processes, each embedding the model
  (``bench/contenders/seed_app.py``);
- ``dirty``: gunicorn 27's dirty arbiter, one dirty worker holding the model, a Falcon
  handler on ``--workers`` gthread workers calling it (``bench/contenders/falcon_apps.py``);
- ``floor``: gunicorn + a Falcon handler that parses the JSON and answers a constant;
- ``ceiling``: ONNX Runtime in-process, no HTTP (``bench/contenders/ceiling.py``): batch 1
  and the best of a few batch sizes (rows/s).

Models: the digits demo and the ~245 MB heavy MLP (1024 -> 4 x 4352 -> 10, generated
into a temp dir). Load: ``wrk -t2 -cN -dD --timeout 10s --latency`` with a Lua script that
POSTs one row (the same row for every contender). Errors = non-2xx + socket errors. PSS
is summed over the whole process tree of everything the contender started (HAProxy
included), measured right after its last wrk run.

Output: a markdown table on stdout, ``bench/out/compare.json`` and ``bench/out/compare.png``.
Every process started is stopped by pid; temp dirs are removed; no shared-memory segment
with our prefix is left behind, even on an error, Ctrl-C or SIGTERM.

Fixed offered rate (the fair p99): after its wrk runs, every contender also gets
``--fixed-seconds`` of open-loop load from ``bench/openloop.py`` at the SAME rate, half the
seed design's best req/s on that model (the seed runs first to measure it; ``--rate
MODEL=R`` sets it by hand; capacity counts 2xx answers only). Its latencies run from each request's due time
(coordinated omission corrected, as wrk2 does; wrk2 is not packaged in Debian). The table
shows these rows as ``fixed R/s`` in the connections column.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from procs import cleaned_up, descendants, pss_kb, stop_on_sigterm  # noqa: E402

import shm  # noqa: E402
from falconctl.stack import Stack, free_port, http_status, split_hostport  # noqa: E402
from tests.modelfactory import write_mlp_model  # noqa: E402

PYTHON = sys.executable
OUT = ROOT / "bench" / "out" / "compare.json"
HEAVY_INPUT = 1024
CONTENDERS = ("platform", "seed", "dirty", "floor")
CEILING_BATCHES = {"digits": [1, 8, 32, 128], "heavy": [1, 8, 32, 64]}
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{body}", "r"))
wrk.body = f:read("*a")
f:close()
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- /proc


# ---------------------------------------------------------------- wrk

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"latency {text!r}")
    return float(m[1]) * UNIT[m[2]]


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
    pss_mb: float = 0.0
    procs: int = 0
    offered_rps: float = 0.0  # > 0: a fixed-offered-rate run (bench/openloop.py)
    late_sends: int = 0  # requests the open-loop generator sent > 5 ms late

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors

    @property
    def ok_rps(self) -> float:
        """Answers per second that were 2xx (a 503 storm is not capacity)."""
        return self.rps * (self.requests - self.non2xx) / self.requests if self.requests else 0.0


def parse_wrk(out: str) -> dict[str, Any]:
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    reqs = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if not (lat and reqs and rps):
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return {
        "rps": float(rps[1]),
        "p50_ms": _ms(lat["50"]),
        "p99_ms": _ms(lat["99"]),
        "requests": int(reqs[1]),
        "non2xx": int(non2xx[1]) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


def wrk(url: str, lua: Path, connections: int, seconds: float) -> dict[str, Any]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency",
            "-s", str(lua), url]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return parse_wrk(res.stdout)


def openloop(url: str, body: Path, rate: float, seconds: float) -> dict[str, Any]:
    """A fixed offered rate, latency from each request's due time (bench/openloop.py)."""
    argv = [PYTHON, str(ROOT / "bench" / "openloop.py"), url, str(body), f"{rate:.3f}",
            f"{seconds:g}", "--timeout", "10"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    return {"rps": doc["achieved_rps"], "p50_ms": doc["p50_ms"], "p99_ms": doc["p99_ms"],
            "requests": doc["sent"], "non2xx": doc["non2xx"],
            "socket_errors": doc["socket_errors"], "offered_rps": rate,
            "late_sends": doc["late_sends"], "connections": doc["connections"]}


# ---------------------------------------------------------------- contenders


@dataclass
class Bench:
    tmp: Path
    workers: int
    threads: int
    stacks: list[Stack] = field(default_factory=list)
    started: int = 0
    env: dict[str, str] = field(default_factory=dict)  # FALCON_* overrides (platform)
    floor_class: str = "gthread"  # the floor's gunicorn worker class

    def stack(self, name: str, repo: Path) -> Stack:
        self.started += 1
        tmp = self.tmp / f"{name}-{self.started}"
        tmp.mkdir(parents=True)
        (tmp / "falcon.toml").write_text("# bench/compare.py configures everything via the env\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FALCON_")}
        env.update({
            "FALCON_CONFIG": str(tmp / "falcon.toml"),
            "FALCON_PATHS_RUN_DIR": str(tmp / "run"),
            "FALCON_PATHS_STATE_DIR": str(tmp / "state"),
            "FALCON_DAEMON_MODEL_REPOSITORY": str(repo),
            "FALCON_DAEMON_SHM_PREFIX": f"fbench{uuid.uuid4().hex[:10]}",
            "FALCON_EDGE_BIND": f"127.0.0.1:{free_port()}",
            "FALCON_EDGE_WORKERS": str(self.workers),
            "FALCON_EDGE_THREADS": str(self.threads),
            "FALCON_HAPROXY_BIND": f"127.0.0.1:{free_port()}",
            "FALCON_HAPROXY_STATS_BIND": f"127.0.0.1:{free_port()}",
            "FALCON_AUTH_ENABLED": "false",
            "PYTHONPATH": str(ROOT),
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


def start(contender: str, bench: Bench, repo: Path, model: str) -> Stack:
    stack = bench.stack(contender, repo)
    _, port = split_hostport(stack.env["FALCON_EDGE_BIND"])
    w, t = str(bench.workers), str(bench.threads)
    gunicorn = [PYTHON, "-m", "gunicorn", "-w", w, "-k", "gthread", "--threads", t,
                "--keep-alive", "30", "-b", f"127.0.0.1:{port}", "--log-level", "warning"]
    model_path = repo / model / "1" / "model.onnx"
    try:
        if contender == "platform":
            stack.start_daemon()
            stack.start_edge()
        elif contender == "seed":
            start_app(stack, [PYTHON, "-m", "uvicorn", "bench.contenders.seed_app:app",
                              "--host", "127.0.0.1", "--port", str(port), "--workers", w,
                              "--timeout-keep-alive", "30", "--log-level", "warning",
                              "--no-access-log"], model, model_path)
        elif contender == "dirty":
            start_app(stack, [*gunicorn, "--dirty-app", "bench.contenders.falcon_apps:OnnxApp",
                              "--dirty-workers", "1", "--dirty-timeout", "10",
                              "bench.contenders.falcon_apps:dirty"], model, model_path)
        elif contender == "floor":
            argv = gunicorn if bench.floor_class == "gthread" else [
                PYTHON, "-m", "gunicorn", "-w", w, "-k", "sync", "-b", f"127.0.0.1:{port}",
                "--log-level", "warning"]
            start_app(stack, [*argv, "bench.contenders.falcon_apps:floor"], model, model_path)
        else:
            raise ValueError(contender)
        stack.start_haproxy()
    except BaseException:
        stack.stop()
        raise
    return stack


def check(url: str, body: Path) -> None:
    """One request must answer 200 (else the numbers would measure errors)."""
    res = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          "-H", "Content-Type: application/json", "--data-binary", f"@{body}",
                          url], capture_output=True, text=True, timeout=30)
    if res.stdout.strip() != "200":
        raise RuntimeError(f"{url} answered {res.stdout!r}")


def measure(contender: str, bench: Bench, repo: Path, model: str, body: Path, lua: Path,
            args: argparse.Namespace) -> list[Run]:
    started = time.perf_counter()
    stack = start(contender, bench, repo, model)
    runs = []
    try:
        url = f"http://{stack.env['FALCON_HAPROXY_BIND']}/v1/models/{model}/predict"
        check(url, body)
        log(f"  {contender}/{model}: up in {time.perf_counter() - started:.1f}s")
        if args.warmup:
            wrk(url, lua, min(args.connections), args.warmup)
        for c in args.connections:
            r = Run(contender, model, c, **wrk(url, lua, c, args.duration))
            runs.append(r)
            log(f"  {contender}/{model} c={c}: {r.rps:.0f} req/s, p50 {r.p50_ms:.1f} ms, "
                f"p99 {r.p99_ms:.1f} ms, errors {r.errors}")
        if contender == "seed" and not args.rate.get(model):
            args.rate[model] = max(r.ok_rps for r in runs) / 2  # half the seed's capacity
        rate = args.rate.get(model)
        if rate and args.fixed_seconds:
            res = openloop(url, body, rate, args.fixed_seconds)
            r = Run(contender, model, **res)
            runs.append(r)
            log(f"  {contender}/{model} fixed {rate:.0f}/s: {r.rps:.0f} req/s, p50 "
                f"{r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, errors {r.errors}, "
                f"{r.connections} connections, {r.late_sends} sent late")
        pids = descendants([p.popen.pid for p in stack.procs.values()])
        total = sum(pss_kb(p) for p in pids) / 1024
        for r in runs:
            r.pss_mb, r.procs = total, len(pids)
        log(f"  {contender}/{model}: PSS {total:.0f} MB over {len(pids)} processes")
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


def table(runs: list[Run], ceilings: list[dict[str, Any]]) -> str:
    rows = ["| contender | model | connections | req/s | p50 ms | p99 ms | errors | "
            "total PSS MB (processes) |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        conns = f"fixed {r.offered_rps:,.0f}/s" if r.offered_rps else str(r.connections)
        rows.append(f"| {r.contender} | {r.model} | {conns} | {r.rps:,.0f} | "
                    f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} | {r.pss_mb:,.0f} ({r.procs}) |")
    for c in ceilings:
        rows.append(f"| ceiling, batch 1 (calls/s) | {c['model']} | - | {c['batch1']:,.0f} | - | "
                    f"- | - | {c['pss_kb'] / 1024:,.0f} (1) |")
        rows.append(f"| ceiling, batch {c['best_batch']} (rows/s) | {c['model']} | - | "
                    f"{c['best_rows_per_s']:,.0f} | - | - | - | {c['pss_kb'] / 1024:,.0f} (1) |")
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
    p.add_argument("--threads", type=int, default=32, help="gthread threads per worker")
    p.add_argument("--floor-class", choices=("gthread", "sync"), default="gthread",
                   help="the floor's gunicorn worker class (sync: one request per worker, "
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
            lua = bench.tmp / f"post-{model}.lua"
            lua.write_text(LUA.format(body=body))
            ceilings.append(ceiling(repo, model, body, args.ceiling_seconds))
            for contender in args.contenders:
                try:
                    runs += measure(contender, bench, repo, model, body, lua, args)
                except Exception as exc:  # one broken contender must not hide the others
                    failures[f"{contender}/{model}"] = str(exc)[-2000:]
                    log(f"  {contender}/{model} FAILED: {str(exc)[-500:]}")
    cmd = " ".join(["python", "bench/compare.py", *argv])
    load = os.getloadavg()
    print(f"\n### Side by side, `{cmd}`, {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores, {args.workers} workers, wrk -t2 {args.duration:g}s "
          f"(load average at the start {load_start[0]:.1f}, at the end {load[0]:.1f})\n")
    print(table(runs, ceilings))
    for name, err in failures.items():
        print(f"\nFAILED {name}: {err}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": cmd, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args),
           "runs": [asdict(r) | {"errors": r.errors} for r in runs], "ceiling": ceilings,
           "failures": failures, "loadavg_start": load_start, "loadavg_end": load}
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    png = args.out.with_suffix(".png")
    if runs:
        plot(runs, ceilings, png)
    print(f"\nwrote {args.out} and {png}; total {time.perf_counter() - started:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
