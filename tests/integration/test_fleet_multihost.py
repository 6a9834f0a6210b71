"""The fleet's desired state converging on three hosts, for real: network
namespaces (tests/netns.py), HAProxy in front, one PostgreSQL holding the
fleet state, a reconciler per host (``falconctl reconcile``).

    front  10.213.0.1   HAProxy, PostgreSQL (audit + fleet state)
    host-a 10.213.0.2   daemon, edge, reconciler
    host-b 10.213.0.3   daemon, edge, reconciler
    host-c 10.213.0.4   daemon, edge, reconciler

Under steady traffic to model ``mlp`` through HAProxy, an operator on the
front runs ``falconctl hosts``: pins the split, takes host-c out and down, loads
version 2 (host-a and host-b load it at once, host-c when it returns), splits
50/50, stops PostgreSQL (every host keeps serving as it was), starts it again
and rolls back. Not one request fails; each change is one audit event, and
each host's applied change one more.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import pytest

from tests.loadgen import LoadGen
from tests.modelfactory import write_mlp_model
from tests.multihost import (
    HAPROXY_PORT,
    front_postgres,
    front_stack,
    host_stack,
    stop_all,
    wait_status,
)
from tests.netns import NetStack, Network, entered
from tests.stacks import ROOT, falconctl

HOSTS = ("a", "b", "c")


@pytest.fixture
def net():
    network = Network({"front": 1, "a": 2, "b": 3, "c": 4}).up()
    yield network
    network.close()


def hosts_cmd(net: Network, front: NetStack, *args: str) -> subprocess.CompletedProcess:
    """``falconctl hosts ARGS`` on the front (in its namespace)."""
    return subprocess.run([*net.wrap("front"), sys.executable, "-m", "falconctl", "hosts", *args],
                          env=front.env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def status(net: Network, front: NetStack) -> tuple[int, dict[str, Any]]:
    out = hosts_cmd(net, front, "status", "--json")
    return out.returncode, (json.loads(out.stdout) if out.stdout.startswith("{") else {})


def wait_converged(net: Network, front: NetStack, hosts: tuple[str, ...],
                   timeout: float = 30.0) -> float:
    """Seconds until every host of ``hosts`` reports the head revision."""
    start = time.monotonic()
    while True:
        _, doc = status(net, front)
        if doc and all(doc["hosts"].get(f"host-{h}", {}).get("converged") for h in hosts):
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, doc
        time.sleep(0.1)


def query(net: Network, dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with entered(net.ns("front")):
        conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def start_host(stack: NetStack) -> None:
    stack.start_daemon()
    stack.start_reconciler()
    stack.start_edge()


def served_versions(load: LoadGen, since: float) -> set[str]:
    return {o.doc["version"] for o in list(load.outcomes) if o.started > since and o.doc}


def test_the_fleet_state_reaches_every_host_under_traffic(net: Network, tmp_path: Path) -> None:
    with front_postgres(net) as pg:
        dsn = pg.dsn("falcon")
        hosts = {}
        for h in HOSTS:
            stack = host_stack(net, tmp_path / h, h, dsn, cache=False)
            stack.env.update(FALCON_FLEET_DSN=dsn, FALCON_FLEET_INTERVAL_S="1",
                             FALCON_CACHE_SERVERS="")
            write_mlp_model(Path(stack.env["FALCON_DAEMON_MODEL_REPOSITORY"]), "mlp",
                            input_dim=8, hidden=16, layers=1, classes=3, seed=1)
            hosts[h] = stack
        front = front_stack(net, tmp_path / "front", list(HOSTS))
        front.env.update(FALCON_FLEET_DSN=dsn)
        try:
            _run(net, pg, dsn, hosts, front)
        finally:
            leaked = stop_all(front, hosts.values())
        assert leaked == [], "shared-memory segments left behind"


def _run(net: Network, pg: Any, dsn: str, hosts: dict[str, NetStack], front: NetStack) -> None:
    starters = [threading.Thread(target=start_host, args=(s,)) for s in hosts.values()]
    for t in starters:
        t.start()
    for t in starters:
        t.join(180)
    assert all("edge" in s.procs for s in hosts.values()), "a host did not start"
    front.start_haproxy()
    for h in HOSTS:
        wait_status(front, f"host-{h}", "UP", exact=True)
    rows = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    load = LoadGen(f"{net.addr('front')}:{HAPROXY_PORT}", rows, threads=4, model="mlp",
                   netns=net.ns("front")).start()
    timings: dict[str, float] = {}
    # after `rollback --wait` every daemon runs the split; an edge worker learns it within
    # edge.metadata_ttl_s (twice it, and a reconciler interval, on a loaded 2-core machine)
    configured = hosts["a"].settings
    settle = 2 * configured.edge.metadata_ttl_s + configured.fleet.interval_s
    try:
        # r1: the model joins the fleet pinned to version 1, on every host
        out = hosts_cmd(net, front, "split", "mlp", "1=100", "--wait", "20")
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.startswith("revision 1: split mlp"), out.stdout

        # the operator copies version 2 everywhere and takes host-c out and down
        for stack in hosts.values():
            write_mlp_model(Path(stack.env["FALCON_DAEMON_MODEL_REPOSITORY"]), "mlp",
                            input_dim=8, hidden=16, layers=1, classes=3, seed=2, version="2")
        falconctl(front, "hosts", "maint", "host-c")
        time.sleep(0.3)  # its in-flight requests finish
        hosts["c"].stop()

        # r2: load version 2 -- host-a and host-b at once, host-c when it returns
        loaded = time.monotonic()
        out = hosts_cmd(net, front, "load", "mlp", "2")
        assert out.returncode == 0 and out.stdout.startswith("revision 2: load mlp"), out.stdout
        timings["load on a and b"] = wait_converged(net, front, ("a", "b"))
        code, doc = status(net, front)
        assert code == 5 and not doc["converged"] and not doc["hosts"]["host-c"]["converged"]
        assert doc["hosts"]["host-a"]["actual"]["mlp"] == {"versions": ["1", "2"],
                                                          "split": {"1": 100}}
        assert doc["hosts"]["host-c"]["actual"]["mlp"] == {"versions": ["1"], "split": {"1": 100}}
        human = hosts_cmd(net, front, "status")
        assert human.returncode == 5 and "host-c" in human.stdout.splitlines()[-1], human.stdout
        assert served_versions(load, loaded) == {"1"}  # loaded and warm, but no traffic yet
        returned = time.monotonic()
        start_host(hosts["c"])
        wait_converged(net, front, HOSTS)
        timings["host-c after its start began"] = time.monotonic() - returned
        assert status(net, front)[0] == 0
        falconctl(front, "hosts", "ready", "host-c")
        wait_status(front, "host-c", "UP")

        # r3: a split reaches all three
        out = hosts_cmd(net, front, "split", "mlp", "1=50", "2=50", "--wait", "20")
        assert out.returncode == 0, out.stdout + out.stderr
        split_at = time.monotonic()
        traffic = hosts_cmd(net, front, "traffic", "mlp")
        assert traffic.returncode == 0 and traffic.stdout.count('{"1": 50, "2": 50}') == 3, \
            traffic.stdout

        # PostgreSQL stopped: every host serves as it was, the reconcilers wait
        time.sleep(1.0)
        pg.stop()
        stopped = time.monotonic()
        time.sleep(3.0)
        down = hosts_cmd(net, front, "status")
        assert down.returncode == 4 and "unreachable" in down.stderr, down.stdout + down.stderr
        during = [o for o in list(load.outcomes) if stopped < o.started]
        assert during and {o.status for o in during} == {200}
        assert served_versions(load, stopped) == {"1", "2"}  # the split holds
        pg.start()
        timings["reconverged after PostgreSQL returned"] = wait_converged(net, front, HOSTS)

        # r4: a rollback reaches all three; its retry in the absolute form changes nothing
        out = hosts_cmd(net, front, "rollback", "mlp", "--wait", "20")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "--to-revision 2" in out.stdout, out.stdout
        rolled = time.monotonic()
        retry = hosts_cmd(net, front, "rollback", "mlp", "--to-revision", "2")
        assert retry.returncode == 0 and "unchanged at revision 4" in retry.stdout, retry.stdout
        traffic = hosts_cmd(net, front, "traffic", "mlp")
        assert traffic.stdout.count('{"1": 100}') == 3, traffic.stdout
        time.sleep(settle + 1.0)  # then at least a second of answers, all from version 1
    finally:
        outcomes = load.stop()

    assert {o.status for o in outcomes} == {200}, \
        sorted({(o.status, o.started) for o in outcomes if o.status != 200})[:5]
    assert len(outcomes) > 200
    assert served_versions(load, split_at) >= {"1", "2"}
    assert {o.doc["version"] for o in outcomes if o.started > rolled + settle} == {"1"}

    # every change once in the audit events: the desired-state change with its actor,
    # and each host's applied change (host-c's load when it came back)
    fleet_events = query(net, dsn, "SELECT kind, (detail->>'revision')::int, host, actor "
                                   "FROM audit.events ORDER BY id")
    changes = [(k, r) for k, r, _, _ in fleet_events if k != "fleet.applied"]
    assert changes == [("fleet.split", 1), ("fleet.load", 2), ("fleet.split", 3),
                       ("fleet.rollback", 4)]
    assert all(a.startswith("falconctl:") for k, _, _, a in fleet_events if k != "fleet.applied")
    applied = sorted((h, r) for k, r, h, _ in fleet_events if k == "fleet.applied")
    assert applied == sorted((f"host-{h}", r) for h in HOSTS for r in (1, 2, 3, 4)), applied
    logs = {h: (s.log_dir / "reconciler.log").read_text() for h, s in hosts.items()}
    for h, text in logs.items():
        assert text.count("PostgreSQL unreachable") == 1, (h, text[-2000:])
    print(f"\nfleet: {len(outcomes)} requests, all 200; "
          + "; ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
