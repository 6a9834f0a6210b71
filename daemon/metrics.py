"""The daemon's metrics (merged into the edge's ``/metrics`` through the
host's multiprocess directory; see ``service.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from telemetry.exemplars import Exemplars

SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0, 2.5)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

QUEUE = Histogram("falcon_inference_queue_seconds", "Time a request waited in the daemon "
                  "(batcher queue) before its run started.", ["model", "version"],
                  buckets=SECONDS)
COMPUTE = Histogram("falcon_inference_compute_seconds", "ONNX Runtime time of the run that "
                    "answered a request.", ["model", "version"], buckets=SECONDS)
BATCH_ROWS = Histogram("falcon_batch_rows", "Request rows in the run that answered a request "
                       "(a lone row run padded to two counts 1).",
                       ["model", "version"], buckets=ROWS)
OUTCOMES = Counter("falcon_inference_requests_total", "Infer requests answered by the daemon.",
                   ["model", "version", "outcome"])
SHM_BYTES = Gauge("falcon_shm_bytes", "Shared-memory bytes of a loaded model version.",
                  ["model", "version"], multiprocess_mode="livemax")
WARMUP_SECONDS = Gauge("falcon_warmup_seconds", "Seconds the last load of a model version "
                       "spent in its warm-up runs (synthetic inputs at 1 row and at its "
                       "batch size) before it became routable.", ["model", "version"],
                       multiprocess_mode="livemax")
EXEMPLARS = Exemplars()  # the daemon's latest sampled trace id per COMPUTE bucket
INFLIGHT = Gauge("falcon_daemon_inflight_requests", "Infer requests admitted and not yet "
                 "answered.", multiprocess_mode="livesum")
