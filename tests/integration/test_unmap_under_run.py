"""A daemon stopped (or a version unloaded) past its drain timeout never unmaps
weights ONNX Runtime is still reading (issue 15 item 12): it used to close the
segment under a running session (a SIGSEGV risk); the release now waits for the
last run to end."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np

from tests.httpx_lite import post_json
from tests.modelfactory import write_mlp_model

ROWS = 1000


def test_a_stop_past_the_drain_timeout_waits_for_the_running_session(make_stack, tmp_path):
    repo = tmp_path / "repo"
    write_mlp_model(repo, "slow", input_dim=64, hidden=2048, layers=10, classes=10, seed=1,
                    max_batch_size=ROWS)
    stack = make_stack(repo=repo, FALCON_DAEMON_DRAIN_TIMEOUT_S="0",
                       FALCON_EDGE_DEADLINE_MS="60000", FALCON_EDGE_MAX_BODY_BYTES=str(64 << 20))
    edge = stack.settings.edge.bind
    rows = {"instances": np.random.default_rng(0).normal(size=(ROWS, 64)).round(3).tolist()}
    started = time.monotonic()
    assert post_json(edge, "/v1/models/slow/predict", rows, timeout=60).status == 200
    took = time.monotonic() - started
    assert took > 0.4, f"the run is too quick ({took:.2f} s) to stop the daemon under it"
    answers = []
    thread = threading.Thread(target=lambda: answers.append(
        post_json(edge, "/v1/models/slow/predict", rows, timeout=60).status))
    thread.start()
    time.sleep(took / 2)  # the run is under way
    daemon = stack.procs.pop("daemon")
    code = daemon.stop(signal.SIGTERM)
    thread.join(60)
    assert code == 0, (code, daemon.tail())
