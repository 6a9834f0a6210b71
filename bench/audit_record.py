"""CPU cost of the edge's audit path per digits request, piece by piece (no servers).

    .venv/bin/python -m bench.audit_record

canonical input bytes, their digest, the outputs document, the record's msgpack
payload, a WAL append (``interval``: no fsync wait; ``batch``: one thread, so
the group commit is one fdatasync per record) and the whole ``Auditor.record``.
Prints microseconds per call (mean of many calls; noisy on a busy machine).
"""

from __future__ import annotations

import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from audit.record import AuditRecord
from audit.wal import WalWriter
from edge.audit import Auditor, RequestContext, canonical, input_digest, outputs_doc

ROOT = Path(__file__).resolve().parent.parent

N = 20000


def per_call_us(func: Callable[[], object], n: int = N) -> float:
    return timeit.timeit(func, number=n) / n * 1e6


def main() -> int:
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    outs: list[tuple[str, np.ndarray]] = [("label", np.array([3], dtype=np.int64)),
            ("probabilities", np.random.default_rng(1).random((1, 10)).astype(np.float32))]
    data, meta = canonical([("input", x)])
    rec = AuditRecord(request_id="r" * 40, ts=time.time(), host="h", model="digits",
                      version="1", face="v1", input_digest=input_digest(data), input_meta=meta,
                      outputs=outputs_doc(outs), labels=[3], cached=False, latency_ms=1.0,
                      inputs=data, trace_id="t" * 32, request_key="front-" + "k" * 32)
    rows: list[tuple[str, Callable[[], object]]] = [("canonical", lambda: canonical([("input", x)])),
            ("input_digest", lambda: input_digest(data)),
            ("outputs_doc", lambda: outputs_doc(outs)),
            ("to_payload", rec.to_payload)]
    for label, func in rows:
        print(f"{label:<28} {per_call_us(func):7.1f} us")
    payload = rec.to_payload()
    with tempfile.TemporaryDirectory(prefix="falcon-bench-record-") as tmp:
        for sync, n in (("interval", N), ("batch", 3000)):
            writer = WalWriter(Path(tmp), f"s-{sync}", sync=sync, min_free_bytes=0)
            cost = per_call_us(partial(writer.append, payload), n)
            print(f"{'append (' + sync + ')':<28} {cost:7.1f} us")
            writer.close()
        auditor = Auditor(Path(tmp), "h", lambda d, s: WalWriter(d, s, sync="interval",
                                                                  min_free_bytes=0))
        ctx = RequestContext("r" * 40, "v1", trace_id="t" * 32)
        canon = canonical([("input", x)])
        print(f"{'Auditor.record (interval)':<28} "
              f"{per_call_us(lambda: auditor.record(ctx, model='digits', version='1', canon=canon, outputs=outs, labels=[3], cached=False)):7.1f} us")  # noqa: E501
        auditor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
