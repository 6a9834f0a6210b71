"""The ceiling: ONNX Runtime in-process, no HTTP. Prints one JSON line.

``python -m bench.contenders.ceiling MODEL.onnx BODY.json SECONDS BATCH...``: for each batch
size, calls ``session.run`` on that many rows for about SECONDS and reports calls/s and
rows/s (the row is the first of BODY's instances, as the HTTP contenders get), plus this process's PSS (it holds one copy of the model).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from bench.contenders.common import Model


def measure(model: Model, x: np.ndarray, seconds: float) -> float:
    model.run(x)  # warm
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        model.run(x)
        calls += 1
    return calls / elapsed


def pss_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def main(argv: list[str]) -> None:
    path, body, seconds, batches = argv[0], argv[1], float(argv[2]), argv[3:]
    model = Model(path)
    with open(body) as f:
        row = np.asarray(json.load(f)["instances"][:1], dtype=np.float32)
    out = []
    for b in map(int, batches):
        cps = measure(model, np.repeat(row, b, axis=0), seconds)
        out.append({"batch": b, "calls_per_s": cps, "rows_per_s": cps * b})
    print(json.dumps({"runs": out, "pss_kb": pss_kb()}))


if __name__ == "__main__":
    main(sys.argv[1:])
