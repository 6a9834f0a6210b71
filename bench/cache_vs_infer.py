"""When does the prediction cache pay? One edge-side call each way, side by side.

    .venv/bin/python -m bench.cache_vs_infer [--n 2000]

Starts a daemon (the digits demo, and a ~25 MB MLP unless --no-mlp) and a
memcached on free loopback ports, then times from one thread, as the edge does:
  infer  - Core._run: encode, Unix-socket round trip to the daemon, ONNX Runtime, decode
  hit    - PredictionCache.get of a stored answer: Memcached round trip + decode
Prints a markdown table of median and p99 microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from edge.cache import PredictionCache, cache_key
from edge.core import Core
from edge.daemon_client import DaemonClient
from falconctl.stack import Stack, free_port
from tests.modelfactory import write_mlp_model
from tests.stacks import make_repo, stack_env

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, n: int) -> tuple[float, float]:
    for _ in range(50):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * len(samples))]


def compare(core: Core, cache: PredictionCache, name: str, width: int, n: int) -> None:
    meta = core.metadata(name, None, core.deadline())
    inputs = [("input", np.random.default_rng(0).random((1, width), np.float32))]
    result = core._run(meta, inputs, core.deadline())
    key = cache_key(name, meta.content_digest, uuid.uuid4().hex)
    cache.set(key, result.outputs, 60)
    for label, fn in (("infer (daemon)", lambda: core._run(meta, inputs, core.deadline(5000))),
                      ("cache hit (memcached)", lambda: cache.get(name, key))):
        med, p99 = timed(fn, n)
        print(f"| {name} | {label} | {med:.0f} | {p99:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--no-mlp", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="falcon-cachebench-"))
    repo = make_repo(tmp / "models")
    if not args.no_mlp:
        write_mlp_model(repo, "mlp", input_dim=1024, hidden=1536, layers=3, classes=10, seed=3)
    stack = Stack(stack_env(tmp, repo, FALCON_DAEMON_SHM_PREFIX=f"fcb{uuid.uuid4().hex[:8]}"),
                  tmp / "logs")
    port = free_port()
    mc = subprocess.Popen(["memcached", "-u", "nobody", "-l", "127.0.0.1", "-p", str(port),
                           "-U", "0", "-m", "64"])
    try:
        stack.start_daemon()
        core = Core(DaemonClient(stack.settings.daemon_socket))
        cache = PredictionCache([("127.0.0.1", port)], secret=b"bench", timeout_s=0.5)
        print("| model | path | median µs | p99 µs |\n|---|---|---:|---:|")
        for name, width in (("digits", 64), ("mlp", 1024)):
            if name == "mlp" and args.no_mlp:
                continue
            compare(core, cache, name, width, args.n)
    finally:
        stack.stop()
        mc.terminate()
        mc.wait()


if __name__ == "__main__":
    main()
