"""An answer over the frame limit fails its own request only (issue 15 item 10).

The daemon checks each answer against ``daemon.max_frame_bytes`` (the edge's
reader limit too) and answers a bigger one with ``ResultTooLarge`` (edge: 400,
"send fewer rows"); sent as it was, the edge's reader dropped the worker's
shared daemon connection and every request in flight on it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tests.httpx_lite import post_json
from tests.modelfactory import write_mlp_model
from tests.stacks import make_repo

DIGITS_ROW = {"instances": [[0.0] * 64]}
CLASSES = 4000  # 16 kB of probabilities per row


def test_an_answer_over_the_frame_limit_fails_alone(make_stack, tmp_path):
    repo = make_repo(tmp_path / "repo")
    write_mlp_model(repo, "wide", input_dim=2, hidden=8, layers=1, classes=CLASSES, seed=1)
    stack = make_stack(repo=repo, FALCON_DAEMON_MAX_FRAME_BYTES=str(64 << 10),
                       FALCON_EDGE_WORKERS="1", FALCON_EDGE_THREADS="16")
    edge = stack.settings.edge.bind
    rows = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)  # ~128 kB answer

    one = post_json(edge, "/v1/models/wide/predict", {"instances": rows[:1].tolist()})
    assert one.status == 200, one.body  # one row fits

    def small(_: int) -> int:
        return post_json(edge, "/v1/models/digits/predict", DIGITS_ROW).status

    def big(_: int) -> tuple[int, bytes]:
        ans = post_json(edge, "/v1/models/wide/predict", {"instances": rows.tolist()})
        return ans.status, ans.body

    with ThreadPoolExecutor(12) as pool:  # one worker: one shared daemon connection
        smalls, bigs = [], []
        for i in range(300):  # the big ones among the small ones
            smalls.append(pool.submit(small, i))
            if i % 20 == 10:
                bigs.append(pool.submit(big, i))
        statuses = [f.result() for f in smalls]
    assert statuses == [200] * len(statuses), sorted(set(statuses))
    for status, body in (f.result() for f in bigs):
        assert status == 400 and b"frame limit" in body and b"fewer rows" in body, (status, body)
    assert small(0) == 200
