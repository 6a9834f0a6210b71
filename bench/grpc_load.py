"""The platform's gRPC face against its REST face, through HAProxy, on the demo models and
the bench's heavy one.

    .venv/bin/python -m bench.grpc_load [--seconds 10] [--clients 8] [--rows 1]
        [--models digits iris heavy]

Starts one stack (daemon, edge, gRPC face, HAProxy; auth off, audit on) on free
loopback ports, then for each model (digits, iris, and ``heavy``: ``compare.py``'s ~245 MB
MLP, generated into a temp dir) and each face runs ``--clients``
threads of the stock clients (``tritonclient.grpc``, ``tritonclient.http`` with
binary tensors), each calling in a loop for ``--seconds``, and prints one Markdown
row per (model, face): calls/s, errors, p50 and p99 latency. Closed loop: a client
sends its next call when the last is answered. Every call's rows are distinct (the first
value is ``1 + k / 2**23``), so a model whose config caches answers (heavy) never hits.
Results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.stacks import StackFactory

ROOT = Path(__file__).resolve().parent.parent

MODELS = {"digits": ("input", 64), "iris": ("input", 4), "heavy": ("input", 1024)}


def client_call(face: str, target: str, model: str, rows: np.ndarray) -> Any:
    """A function making one call of ``model`` with ``rows`` through ``face``."""
    if face == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc  # type: ignore[no-redef]
    client = tc.InferenceServerClient(target)
    inp = tc.InferInput(MODELS[model][0], list(rows.shape), "FP32")
    mine = rows.copy()
    counter = iter(range(1, 1 << 30))

    def call() -> Any:
        mine[0, 0] = np.float32(1 + next(counter) / 2**23)  # distinct rows: no cache hit
        inp.set_data_from_numpy(mine)
        return client.infer(model, [inp])
    return call


def run(face: str, target: str, model: str, rows: np.ndarray, clients: int,
        seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop() -> None:
        call = client_call(face, target, model, rows)
        mine: list[float] = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                call()
                mine.append(time.perf_counter() - started)
            except Exception:  # noqa: BLE001 - counted, whatever it is
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.asarray(latencies) * 1000
    return {"model": model, "face": face, "calls_s": len(lat) / seconds, "errors": errors[0],
            "p50": float(np.percentile(lat, 50)) if len(lat) else 0.0,
            "p99": float(np.percentile(lat, 99)) if len(lat) else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = p.parse_args(argv)
    factory = StackFactory(Path(tempfile.mkdtemp(prefix="grpcbench")))
    repo = Path(tempfile.mkdtemp(prefix="grpcbench-repo"))
    import shutil

    for model in args.models:
        if model == "heavy":
            from tests.modelfactory import write_mlp_model

            write_mlp_model(repo, "heavy", input_dim=MODELS["heavy"][1], hidden=4352, layers=4,
                            classes=10, seed=0)  # compare.py's heavy model
            continue
        shutil.copytree(ROOT / "models" / model, repo / model,
                        ignore=shutil.ignore_patterns("*.py", "example.json"))
    stack = factory(start=False, repo=repo, FALCON_HAPROXY_RATE_PER_IP="1000000000")
    try:
        stack.start(grpc=True)
        s = stack.settings
        rng = np.random.default_rng(0)
        print("| model | face | clients | rows/call | calls/s | errors | p50 ms | p99 ms |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for model in args.models:
            rows = rng.random((args.rows, MODELS[model][1]), dtype=np.float32)
            for face, target in (("rest", s.haproxy.bind), ("grpc", s.grpc.public_bind)):
                run(face, target, model, rows, args.clients, 1.0)  # warm up
                r = run(face, target, model, rows, args.clients, args.seconds)
                print(f"| {model} | {face} | {args.clients} | {args.rows} | {r['calls_s']:.0f} "
                      f"| {r['errors']} | {r['p50']:.2f} | {r['p99']:.2f} |", flush=True)
    finally:
        factory.close()
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(factory.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
