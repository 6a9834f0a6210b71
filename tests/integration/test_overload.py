"""Load shedding: at 4x the sustainable load the service keeps answering —
successes stay near capacity, the rest fail fast (503/504), successes stay
within the deadline, nothing hangs."""

from __future__ import annotations

import time

import numpy as np

from tests.loadgen import LoadGen, Outcome, open_loop
from tests.modelfactory import write_mlp_model

DEADLINE_S = 1.0
# What the client measures beyond the server's deadline: its own thread pool and
# connection set-up, on the same 2 cores the server is saturating.
CLIENT_SLACK_S = 1.0
ROWS = 32  # rows per request: each request is real work, so the daemon is the limit


def drive(addr: str, pool: np.ndarray, threads: int, seconds: float) -> list[Outcome]:
    load = LoadGen(addr, pool, threads=threads, model="mlp", timeout=DEADLINE_S + 10,
                   rows_per_request=ROWS).start()
    time.sleep(seconds)
    return load.stop()


def test_four_times_capacity(make_stack, tmp_path):
    repo = tmp_path / "repo"
    # compute-bound: ~9.4 M multiply-adds per row, 32 rows a request
    write_mlp_model(repo, "mlp", input_dim=512, hidden=2048, layers=3, classes=10, seed=0)
    stack = make_stack(repo=repo, FALCON_EDGE_WORKERS="2", FALCON_EDGE_THREADS="4",
                       FALCON_EDGE_DEADLINE_MS=str(int(DEADLINE_S * 1000)),
                       FALCON_DAEMON_MAX_INFLIGHT="8")
    addr = stack.settings.haproxy.bind
    pool = np.random.default_rng(0).normal(size=(64, 512)).astype(np.float32)
    drive(addr, pool, threads=2, seconds=1.0)  # warm up
    base = drive(addr, pool, threads=8, seconds=3.0)  # saturated: capacity
    base_ok = [o for o in base if o.status == 200]
    assert len(base_ok) > 20, len(base_ok)
    capacity = len(base_ok) / 3.0
    # A closed loop of 8 clients can underestimate what the batcher sustains (a clean CI
    # machine once served 3.4x the estimate at "4x"): when the open loop's successes show
    # the estimate was low, that rate is the better estimate and the overload is offered
    # again, at most twice. Queueing the excess instead of refusing it fails either way: the
    # share refused stays small and the latencies below pass the deadline.
    for _ in range(3):
        over = open_loop(addr, pool, rate=4 * capacity, seconds=4.0, model="mlp",
                         rows_per_request=ROWS, timeout=DEADLINE_S + 10)
        over_ok = [o for o in over if o.status == 200]
        print(f"capacity {capacity:.0f}/s; offered {4 * capacity:.0f}/s: {len(over_ok) / 4:.0f}/s ok, "
              f"{len(over) - len(over_ok)} shed, statuses {sorted({o.status for o in over})}")
        if len(over_ok) / 4.0 <= 2 * capacity:
            break
        capacity = len(over_ok) / 4.0
    assert len(over_ok) / 4.0 >= 0.5 * capacity, (len(over_ok), capacity)
    assert len(over) - len(over_ok) > 0.3 * len(over)  # the excess was refused, not queued
    latencies = sorted(o.seconds for o in over_ok)
    assert latencies[int(0.99 * (len(latencies) - 1))] <= DEADLINE_S + CLIENT_SLACK_S
    failed = [o for o in over if o.status != 200]
    slow = sorted(((round(o.seconds, 2), o.status) for o in failed), reverse=True)[:8]
    print("slowest failures:", slow)
    assert {o.status for o in failed} <= {503, 504}, {o.status for o in failed}
    fail_times = sorted(o.seconds for o in failed)
    assert fail_times[int(0.99 * (len(fail_times) - 1))] <= DEADLINE_S + CLIENT_SLACK_S
    assert max(o.seconds for o in over) <= DEADLINE_S + 2 * CLIENT_SLACK_S  # nothing hangs
