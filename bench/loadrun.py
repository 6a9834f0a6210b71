"""Load runs for the benchmarks: wrk (closed loop) and ``bench/openloop.py`` (a fixed
offered rate), each request with a row of its own, and the CPU a stack spends meanwhile.

Usage (``bench/compare.py``, ``bench/profile_path.py``)::

    load = Load(template(body), {"Authorization": f"Bearer {key}"}, tmp)
    res = with_cpu(stack, lambda: load.wrk(url, connections=64, seconds=10))
    res = with_cpu(stack, lambda: load.openloop(url, rate=300, seconds=10))

``template(body)`` turns a one-row v1 body into a template whose first value is ``@X@``.
Every request replaces it with ``1 + k / 2**23`` (``%.9g``): distinct float32 values in
[1, 2), so no two requests carry the same input and a prediction cache never hits. ``k``
runs over a block of ``RUN_BLOCK`` values per load run (wrk: ``start + n * threads + thread
id``), so the runs against one stack never repeat a row either. Results are dicts with
``rps``, ``p50_ms``, ``p99_ms``, ``requests``, ``answered`` (responses, any status),
``non2xx``, ``socket_errors`` and, from :func:`with_cpu`, ``cpu_s`` per process group.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.openloop import DISTINCT_SCALE
from bench.procs import cpu_delta, groups, groups_cpu

if TYPE_CHECKING:
    from falconctl.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LUA = """-- one static body: bench/multihost.py
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{body}", "r"))
wrk.body = f:read("*a")
f:close()
"""
WRK_THREADS = 2
RUN_BLOCK = 1_000_000  # distinct values per load run (DISTINCT_SCALE // RUN_BLOCK runs)
# Every request a distinct row: the template's @X@ becomes 1 + k / 2**23 (openloop.py's
# distinct_value), k = start + n * threads + thread id; wrk runs request() per request.
WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{headers}
local f = assert(io.open("{template}", "r"))
local head, tail = f:read("*a"):match("^(.-)@X@(.*)$")
f:close()
local threads, n = 0, 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function request()
  local k = {start} + n * {stride} + tid
  n = n + 1
  return wrk.format(nil, nil, nil, head .. string.format("%.9g", 1 + k / {scale}) .. tail)
end
"""

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"latency {text!r}")
    return float(m[1]) * UNIT[m[2]]


def parse_wrk(out: str) -> dict[str, Any]:
    """wrk's ``--latency`` report as numbers: rps, p50/p99 in ms, requests (answered, any
    status), the run's seconds, non-2xx answers, socket errors (total and by kind)."""
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    reqs = re.search(r"(\d+) requests in ([0-9.]+(?:us|ms|s|m))", out)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if not (lat and reqs and rps):
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    kinds = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()),
                     strict=True)) if sock else {}
    return {
        "rps": float(rps[1]),
        "p50_ms": _ms(lat["50"]),
        "p99_ms": _ms(lat["99"]),
        "requests": int(reqs[1]),
        "answered": int(reqs[1]),
        "seconds": _ms(reqs[2]) / 1000.0,
        "non2xx": int(non2xx[1]) if non2xx else 0,
        "socket_errors": sum(kinds.values()),
        "socket_error_kinds": kinds,
    }


def run_wrk(url: str, script: Path | str, connections: int, seconds: float,
            wrap: Sequence[str] = (), cwd: Path | None = None) -> tuple[dict[str, Any], str]:
    """One closed-loop wrk run (2 threads, 10 s timeout, latency percentiles) with a Lua
    ``script``, optionally wrapped (e.g. ``ip netns exec NAME``); its numbers and report."""
    argv = [*wrap, "wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds:g}s",
            "--timeout", "10s", "--latency", "-s", str(script), url]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, cwd=cwd)
    if res.returncode != 0:
        raise RuntimeError(f"wrk exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return parse_wrk(res.stdout), res.stdout


@dataclass
class Load:
    """What every load run against one model sends: the body template (its ``@X@``
    differs in every request, so a prediction cache never hits) and the headers (the
    bench's API key, sent to every contender). ``runs`` numbers the load runs so
    that no two runs of one stack repeat a row."""

    template: Path
    headers: dict[str, str]
    tmp: Path
    runs: int = 0

    def next_start(self) -> int:
        self.runs += 1
        return (self.runs * RUN_BLOCK) % DISTINCT_SCALE

    def wrk_script(self) -> Path:
        path = self.tmp / f"{self.template.stem}-{self.runs + 1}.lua"
        path.write_text(WRK_SCRIPT.format(
            headers="\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
                              for k, v in self.headers.items()),
            template=self.template, start=self.next_start(), stride=WRK_THREADS,
            scale=DISTINCT_SCALE))
        return path

    def wrk(self, url: str, connections: int, seconds: float) -> dict[str, Any]:
        return run_wrk(url, self.wrk_script(), connections, seconds)[0]

    def openloop(self, url: str, rate: float, seconds: float) -> dict[str, Any]:
        """A fixed offered rate, latency from each request's due time (bench/openloop.py)."""
        argv = [PYTHON, str(ROOT / "bench" / "openloop.py"), url, str(self.template),
                f"{rate:.3f}", f"{seconds:g}", "--timeout", "10",
                "--distinct", str(self.next_start()),
                *(a for k, v in self.headers.items() for a in ("--header", f"{k}: {v}"))]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                             check=True)
        doc = json.loads(res.stdout.strip().splitlines()[-1])
        return {"rps": doc["achieved_rps"], "p50_ms": doc["p50_ms"], "p99_ms": doc["p99_ms"],
                "requests": doc["sent"], "answered": doc["ok"] + doc["non2xx"],
                "non2xx": doc["non2xx"], "socket_errors": doc["socket_errors"],
                "offered_rps": rate, "late_sends": doc["late_sends"],
                "connections": doc["connections"]}


def with_cpu(stack: Stack, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s result plus ``cpu_s``: the user + system CPU seconds each process
    group of the stack (its root and every descendant) spent meanwhile."""
    pids = groups({name: proc.popen.pid for name, proc in stack.procs.items()})
    before = groups_cpu(pids)
    res = run()
    spent = cpu_delta(before, groups_cpu(pids))
    return res | {"cpu_s": {name: user + system for name, (user, system, _, _) in spent.items()}}



def template(body: Path) -> Path:
    """``body``'s one row with its first value replaced by ``@X@`` (see :class:`Load`)."""
    doc = json.loads(body.read_text())
    row = doc["instances"][0]
    text = json.dumps({"instances": [[0.0, *row[1:]]]})
    path = body.with_suffix(".tmpl")
    path.write_text(text.replace("[[0.0", "[[@X@", 1))
    return path
