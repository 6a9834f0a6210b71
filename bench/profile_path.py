"""Where a request's time goes: CPU per request by process group, and py-spy profiles.

Usage::

    python -m bench.profile_path [--model digits] [--contenders platform floor]
        [--connections 64] [--duration 10] [--no-py-spy] [--rate 250]

Each contender comes up exactly as ``bench/compare.py`` brings it up (same HAProxy
config, same workers and threads, the same API key and distinct rows of
``bench/loadrun.py``). Two wrk runs each, after a warm-up:

1. **CPU split, no profiler attached**: wrk for ``--duration`` seconds while the CPU time
   (utime + stime from ``/proc/PID/stat``) of each process group is read before and
   after: edge workers, the daemon, HAProxy, wrk itself (or, with ``--rate``, the
   open-loop generator ``bench/openloop.py``), and the rest of the host
   (``/proc/stat``). Reported as cores busy and CPU microseconds per answered request.
2. **py-spy** (``pip install py-spy``): ``py-spy record --nonblocking --threads
   --format raw --native`` on every edge worker and on the daemon during a second wrk run of
   the same length (``--gil``: only the thread holding the GIL is sampled, so the
   samples are where the interpreter's one core goes; ``--all-threads`` to see
   the threads waiting for it too). Stacks are folded into self time and inclusive time per function,
   and into samples per thread name, then printed as the top entries. The raw files
   stay in ``--out-dir`` (``bench/out/profile/``) for a flame graph
   (``flamegraph.pl`` or https://www.speedscope.app).

Stops every process it started by pid and removes the temp dir, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import compare
from bench.loadrun import Load, template
from bench.procs import children, cpu_delta, groups, groups_cpu, host_busy_s

OUT_DIR = compare.ROOT / "bench" / "out" / "profile"


def _children_cpu_s(since: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime - since[0], usage.ru_stime - since[1]


def edge_workers(stack: compare.Stack) -> list[int]:
    return children(stack.procs["edge"].popen.pid)


def load_with_cpu(url: str, load: Load, args: argparse.Namespace,
                  stack: compare.Stack) -> dict[str, Any]:
    procs = groups({name: proc.popen.pid for name, proc in stack.procs.items()})
    before = groups_cpu(procs)
    kids0 = _children_cpu_s()
    host0 = host_busy_s()
    started = time.perf_counter()
    if args.rate:  # open loop (the generator's CPU is then in the "wrk" row)
        res = load.openloop(url, args.rate, args.duration)
        res["requests"] = res["answered"]
    else:
        res = load.wrk(url, args.connections, args.duration)
    wall = time.perf_counter() - started
    cpu: dict[str, tuple[float, float, int, int]] = cpu_delta(before, groups_cpu(procs))
    host = host_busy_s() - host0
    cpu["wrk"] = (*_children_cpu_s(kids0), 0, 0)  # wrk was reaped: in our children's usage
    res["cpu_s"] = cpu
    res["host_busy_s"] = host
    res["wall_s"] = wall
    return res


def fold(raw: Path) -> dict[str, Any]:
    """Self and inclusive samples per function, samples per thread."""
    self_: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        threads[thread.split(" ")[-1] if "(" not in thread else thread] += n
        total += n
        if frames:
            self_[_short(frames[-1])] += n
        for f in {_short(f) for f in frames}:
            incl[f] += n
    return {"total": total, "self": self_, "incl": incl, "threads": threads}


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def report_profile(title: str, doc: dict[str, Any], top: int) -> None:
    total = max(1, doc["total"])
    print(f"\n#### {title}: {doc['total']} samples")
    print("\nthreads: " + ", ".join(f"{t} {100 * n / total:.0f}%"
                                     for t, n in doc["threads"].most_common(8)))
    print("\n| self % | function |\n|---:|---|")
    for f, n in doc["self"].most_common(top):
        print(f"| {100 * n / total:.1f} | `{f}` |")
    print("\n| inclusive % | function |\n|---:|---|")
    for f, n in doc["incl"].most_common(top * 2):
        print(f"| {100 * n / total:.1f} | `{f}` |")


def spy(pid: int, out: Path, seconds: float, rate: int, native: bool,
        gil: bool) -> subprocess.Popen:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
            str(rate), "--nonblocking", "--threads", "--format", "raw", "-o", str(out)]
    if native:
        argv.append("--native")
    if gil:
        argv.append("--gil")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile(contender: str, bench: compare.Bench, repo: Path, model: str, body: Path,
            load: Load, args: argparse.Namespace) -> dict[str, Any]:
    stack = compare.start(contender, bench, repo, model)
    try:
        url = f"http://{stack.env['FALCON_HAPROXY_BIND']}/v1/models/{model}/predict"
        compare.check(url, body, bench.headers)
        load.wrk(url, args.connections, args.warmup)
        res = load_with_cpu(url, load, args, stack)
        n = max(1, res["requests"])
        how = f"fixed {args.rate:g}/s" if args.rate else f"{args.connections} connections"
        print(f"\n### {contender}/{model}, {how}, {args.duration:g}s: "
              f"{res['rps']:,.0f} req/s, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
              f"errors {res['non2xx'] + res['socket_errors']}\n")
        print("| process group | cores busy | CPU µs / request (user + system) "
              "| context switches / request (voluntary + preempted) |\n|---|---:|---:|---:|")
        for name, (user, system, switches, preempted) in res["cpu_s"].items():
            print(f"| {name} | {(user + system) / res['wall_s']:.2f} | "
                  f"{1e6 * (user + system) / n:,.0f} ({1e6 * user / n:,.0f} + "
                  f"{1e6 * system / n:,.0f}) | {(switches + preempted) / n:.1f} "
                  f"({switches / n:.1f} + {preempted / n:.1f}) |")
        print(f"| host, all | {res['host_busy_s'] / res['wall_s']:.2f} | "
              f"{1e6 * res['host_busy_s'] / n:,.0f} | |")
        if args.py_spy:
            targets = {"edge-worker": edge_workers(stack)}
            if "daemon" in stack.procs:
                targets["daemon"] = [stack.procs["daemon"].popen.pid]
            args.out_dir.mkdir(parents=True, exist_ok=True)
            spies = []
            for role, pids in targets.items():
                for pid in pids:
                    path = args.out_dir / f"{contender}-{model}-{role}-{pid}.txt"
                    spies.append((role, path, spy(pid, path, args.duration, args.spy_rate,
                                                  args.native, args.gil)))
            time.sleep(1.0)  # py-spy attaches
            load.wrk(url, args.connections, args.duration)
            merged: dict[str, dict[str, Any]] = {}
            for role, path, proc in spies:
                proc.wait(timeout=60)
                if not path.exists():
                    print(f"py-spy wrote nothing for {role} ({path.name})")
                    continue
                doc = fold(path)
                m = merged.setdefault(role, {"total": 0, "self": collections.Counter(),
                                             "incl": collections.Counter(),
                                             "threads": collections.Counter()})
                m["total"] += doc["total"]
                for k in ("self", "incl", "threads"):
                    m[k].update(doc[k])
            for role, doc in merged.items():
                report_profile(f"{contender}/{model} {role}", doc, args.top)
        return res
    finally:
        stack.stop()
        bench.stacks.remove(stack)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits", choices=["digits", "heavy"])
    p.add_argument("--contenders", nargs="+", default=["platform", "floor"],
                   choices=compare.CONTENDERS)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=0.0,
                   help="open-loop requests/s (bench/openloop.py) instead of wrk's closed loop")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="settings for the platform, e.g. FALCON_AUDIT_ENABLED=false")
    p.add_argument("--no-py-spy", dest="py_spy", action="store_false")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--all-threads", dest="gil", action="store_false",
                   help="sample every running thread, not only the one holding the GIL")
    p.add_argument("--spy-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.chdir(compare.ROOT)
    results = {}
    with compare.bench_context(args.workers, args.threads) as bench:
        bench.env.update(kv.split("=", 1) for kv in args.env)
        repo, body = compare.repos(bench.tmp, [args.model])[args.model]
        load = Load(template(body), bench.headers, bench.tmp)
        for contender in args.contenders:
            results[contender] = profile(contender, bench, repo, args.model, body, load, args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.model}.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
