"""An OTLP/HTTP sink for the benchmarks: accepts every export and discards it.

Usage (``bench/tracing_cost.py`` starts it)::

    python -m bench.otlp_sink PORT      # prints "listening on PORT", then serves
    # POST /v1/traces -> 200 (an empty ExportTraceServiceResponse); SIGTERM -> prints
    # {"posts": N, "bytes": B} and exits

The body is read and dropped, never decoded: the bench measures what tracing costs the
platform, not a collector. Loopback only.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COUNTS = {"posts": 0, "bytes": 0}
_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporters reuse their connection

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        with _LOCK:
            COUNTS["posts"] += 1
            COUNTS["bytes"] += length
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()
    print(json.dumps(COUNTS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
