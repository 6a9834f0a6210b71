"""Open-loop HTTP load at a fixed offered rate, latency measured from the intended send time.

Usage::

    python bench/openloop.py URL BODY_FILE RATE SECONDS [--timeout 10] [--max-conns 512]
        [--header "Name: value" ...] [--distinct START]

Request ``i`` is due at ``t0 + i / RATE`` whatever happened to the earlier ones (open
loop: a slow server does not slow the sender down, as it does wrk's closed loop). Its
latency runs from that due time to the last byte of the answer, so time spent waiting
for a free connection, or behind a slow answer, counts. This is the coordinated-omission
correction wrk2 makes. Connections are HTTP/1.1 keep-alive and reused. A new one is
opened when none is idle, up to ``--max-conns``; past that, a request waits for one
(and that wait counts too). The generator stops sending after ``SECONDS`` and waits for
the answers still due, at most ``--timeout`` more. A request with no answer by then, or
a broken connection, is an error, and so is any status other than 2xx.

``--header`` adds a request header (e.g. ``Authorization: Bearer <key>``). With
``--distinct START``, BODY_FILE is a template: its first ``@X@`` becomes, in request
``i``, the float ``1 + (START + i) / 2**23`` (``%.9g``): distinct float32 values in
[1, 2) while ``START + i < 2**23``, so no two requests carry the same input (a
prediction cache never hits). ``bench/compare.py``'s wrk script does the same.

Prints one JSON object: offered and achieved rate, sent, ok, errors (non-2xx and socket
errors apart), p50/p90/p99/max ms, connections opened, and ``late_sends``: how many
requests the generator itself sent more than 5 ms after their due time (when this is not
~0, the generator was starved of CPU and the run says little). Standard library only;
its own process, so its GIL is not the benchmark's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Load:
    host: str
    port: int
    timeout: float
    max_conns: int
    idle: list[Conn] = field(default_factory=list)
    opened: int = 0
    free: asyncio.Condition = field(default_factory=asyncio.Condition)
    latencies: list[float] = field(default_factory=list)
    non2xx: int = 0
    socket_errors: int = 0
    late_sends: int = 0

    async def conn(self) -> Conn:
        async with self.free:
            while not self.idle and self.opened >= self.max_conns:
                await self.free.wait()
            if self.idle:
                return self.idle.pop()
            self.opened += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except OSError:
            async with self.free:
                self.opened -= 1
                self.free.notify()
            raise

    async def release(self, conn: Conn | None) -> None:
        async with self.free:
            if conn is None:
                self.opened -= 1
            else:
                self.idle.append(conn)
            self.free.notify()

    async def one(self, due: float, request: bytes) -> None:
        conn: Conn | None = None
        try:
            conn = await asyncio.wait_for(self.conn(), self.timeout)
            status = await asyncio.wait_for(self._exchange(conn, request), self.timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            self.socket_errors += 1
            if conn is not None:
                conn[1].close()
                await self.release(None)
            return
        self.latencies.append(time.perf_counter() - due)
        if not 200 <= status < 300:
            self.non2xx += 1
        await self.release(conn)

    async def _exchange(self, conn: Conn, request: bytes) -> int:
        reader, writer = conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        return status


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


DISTINCT_SCALE = 2**23  # float32 has 23 fraction bits: 1 + k / 2**23 is exact and distinct


def distinct_value(k: int) -> bytes:
    return b"%.9g" % (1 + k / DISTINCT_SCALE)


class Requests:
    """The bytes of request ``i``: the same body, or the template with its ``@X@``
    replaced by :func:`distinct_value` of ``start + i``."""

    def __init__(self, url: str, body: bytes, headers: list[str], start: int | None) -> None:
        parts = urlsplit(url)
        self.head = "".join(
            [f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n",
             "Content-Type: application/json\r\n", *(f"{h}\r\n" for h in headers)]).encode()
        self.start = start
        self.body = body
        if start is not None:
            self.before, sep, self.after = body.partition(b"@X@")
            if not sep:
                raise ValueError("--distinct: the body has no @X@")

    def __call__(self, i: int) -> bytes:
        body = self.body if self.start is None else (
            self.before + distinct_value(self.start + i) + self.after)
        return self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def drive(url: str, requests: Requests, rate: float, seconds: float, timeout: float,
                max_conns: int) -> dict[str, Any]:
    parts = urlsplit(url)
    load = Load(parts.hostname or "127.0.0.1", parts.port or 80, timeout, max_conns)
    total = max(1, round(rate * seconds))
    tasks = []
    t0 = time.perf_counter() + 0.05
    for i in range(total):
        due = t0 + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -0.005:
            load.late_sends += 1
        tasks.append(asyncio.create_task(load.one(due, requests(i))))
    sent_s = time.perf_counter() - t0
    _, pending = await asyncio.wait(tasks, timeout=timeout + 1)
    for task in pending:
        task.cancel()
    load.socket_errors += len(pending)
    for _, writer in load.idle:
        writer.close()
    lat = sorted(1000 * x for x in load.latencies)
    ok = len(lat) - load.non2xx
    return {"offered_rps": rate, "seconds": seconds, "sent": total,
            "achieved_rps": len(lat) / max(sent_s, 1e-9), "ok": ok, "non2xx": load.non2xx,
            "socket_errors": load.socket_errors, "p50_ms": percentile(lat, 0.5),
            "p90_ms": percentile(lat, 0.9), "p99_ms": percentile(lat, 0.99),
            "max_ms": lat[-1] if lat else math.nan, "connections": load.opened,
            "late_sends": load.late_sends}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("body", type=Path)
    p.add_argument("rate", type=float, help="requests per second")
    p.add_argument("seconds", type=float)
    p.add_argument("--timeout", type=float, default=10.0, help="per request, like wrk's")
    p.add_argument("--max-conns", type=int, default=512)
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="a request header; repeat for several")
    p.add_argument("--distinct", type=int, default=None, metavar="START",
                   help="BODY is a template: its @X@ differs in every request (see above)")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        p.error("rate and seconds must be > 0")
    requests = Requests(args.url, args.body.read_bytes(), args.header, args.distinct)
    doc = asyncio.run(drive(args.url, requests, args.rate, args.seconds, args.timeout,
                            args.max_conns))
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
