"""Throughput with one and with two serving hosts behind one HAProxy.

    python -m bench.multihost [--duration 10] [--connections 32] [--repeat 2]

Builds the multi-host harness of the tests (tests/multihost.py: three network
namespaces on a private bridge; front = HAProxy + memcached + PostgreSQL,
host-a and host-b = daemon + edge + shipper each, audit on), then drives the
front with wrk from inside the front namespace (digits, one row per request,
cache off so every request is inferred), alternating "both hosts in rotation"
and "host-b in maint" (falconctl hosts: HAProxy's runtime API) ``--repeat``
times. Prints a table. On a 2-core machine the hosts share the CPUs: this is a
check that nothing serialises across hosts, not a scaling figure. Must run as
root (namespaces).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.loadrun import LUA, run_wrk
from falconctl.hosts import set_state
from tests import multihost as mh
from tests.netns import Network

ROOT = Path(__file__).resolve().parent.parent


def wrk(net: Network, lua: Path, connections: int, seconds: float) -> dict:
    url = f"http://{net.addr('front')}:{mh.HAPROXY_PORT}/v1/models/digits/predict"
    return run_wrk(url, lua, connections, seconds, wrap=net.wrap("front"))[0]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="falcon-bench-mh-"))
    body = tmp / "body.json"
    body.write_text(json.dumps({"instances": mh.DIGITS["X"][:1].tolist()}))
    lua = tmp / "post.lua"
    lua.write_text(LUA.format(body=body))
    net = Network({"front": 1, "a": 2, "b": 3}).up()
    stacks = []
    try:
        with mh.front_services(net) as dsn:
            hosts = {h: mh.host_stack(net, tmp / h, h, dsn, cache=False) for h in ("a", "b")}
            stacks += hosts.values()
            for stack in hosts.values():
                mh.start_host(stack)
            front = mh.front_stack(net, tmp / "front", list(hosts))
            stacks.append(front)
            front.start_haproxy()
            for h in hosts:
                mh.wait_status(front, f"host-{h}", "UP", exact=True)
            wrk(net, lua, args.connections, 3.0)  # warm-up
            rows = []
            for i in range(args.repeat):
                for label, state in (("two hosts", "ready"), ("one host (b in maint)", "maint")):
                    set_state(front.settings, "host-b", state)
                    r = wrk(net, lua, args.connections, args.duration)
                    rows.append((label, i + 1, r))
                    print(f"{label:<24} run {i + 1}: {r['rps']:8.0f} req/s", file=sys.stderr)
            set_state(front.settings, "host-b", "ready")
    finally:
        for stack in reversed(stacks):
            stack.stop()
        net.close()
    print(f"\nwrk -t2 -c{args.connections} -d{args.duration:g}s, digits 1 row, cache off, "
          "audit on (batch)")
    print(f"{'serving':<24} {'run':>3} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    for label, run, r in rows:
        errors = r.get("non2xx", 0) + r.get("socket_errors", 0)
        print(f"{label:<24} {run:>3} {r['rps']:>8.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
              f"{errors:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
