"""The whole stack under a real systemd: start, crash, hang, reload, stop.

One sandbox and one installed stack for the module (see ``conftest.py``); the
tests run in order and each first makes sure the target is started.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from pathlib import Path

import numpy as np
import psycopg2
import pytest

from tests.httpx_lite import Answer, request
from tests.loadgen import LoadGen
from tests.otlp_receiver import OtlpReceiver, Span
from tests.system.systemd_falcon import FALCONCTL, UNITS, VENV, Falcon, dump_toml
from tests.system.systemd_sandbox import wait_until

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")


def predict(addr: str, rid: str = "", timeout: float = 5.0) -> Answer:
    body = json.dumps({"instances": DIGITS["X"][:2].tolist()})
    headers = {"Content-Type": "application/json", **({"X-Request-Id": rid} if rid else {})}
    return request(addr, "POST", "/v1/models/digits/predict", body, headers, timeout=timeout)


def serves_again(falcon: Falcon, after: str, timeout: float = 20.0) -> None:
    """Wait until a prediction through HAProxy succeeds (bounded)."""
    last: list[object] = []

    def ok() -> bool:
        try:
            ans = predict(falcon.haproxy, timeout=2.0)
        except OSError as exc:
            last[:] = [exc]
            return False
        last[:] = [ans.status, ans.body[:200]]
        return ans.status == 200
    try:
        wait_until(ok, timeout, f"predictions {after}", interval=0.2)
    except TimeoutError:
        pytest.fail(f"no prediction {after} within {timeout}s; last: {last}\n{journals(falcon)}")


def journals(falcon: Falcon) -> str:
    return "\n".join(f"--- {u}\n{falcon.box.journal(u, 40)}" for u in UNITS)


def started(falcon: Falcon) -> None:
    done = falcon.box.systemctl("start", "falcon.target", check=False, timeout=150)
    states = {u: falcon.box.show(u, "ActiveState") for u in UNITS}
    assert done.returncode == 0 and set(states.values()) == {"active"}, \
        f"{done.stderr}\n{states}\n{journals(falcon)}"


def main_pid(falcon: Falcon, unit: str) -> int:
    return int(falcon.box.show(unit, "MainPID") or 0)


def restarted(falcon: Falcon, unit: str, old_pid: int, timeout: float) -> int:
    """Wait until ``unit`` runs again under a new main pid; that pid."""
    def check() -> int:
        pid = main_pid(falcon, unit)
        active = falcon.box.show(unit, "ActiveState") == "active"
        return pid if active and pid not in (0, old_pid) else 0
    try:
        return int(wait_until(check, timeout, f"{unit} restarted", interval=0.2))
    except TimeoutError:
        pytest.fail(f"{unit} not restarted within {timeout}s:\n{falcon.box.journal(unit)}")


def test_start_brings_the_stack_up_and_a_prediction_succeeds_through_haproxy(falcon: Falcon):
    t0 = time.monotonic()
    started(falcon)
    took = time.monotonic() - t0
    # Type=notify everywhere: when `systemctl start` returns, everything serves.
    ans = predict(falcon.haproxy, rid="sysd-first-prediction")
    assert ans.status == 200, (ans.status, ans.body, journals(falcon))
    doc = ans.json()
    assert doc["model"] == "digits" and len(doc["predictions"]) == 2
    assert doc["request_id"] == "sysd-first-prediction"
    assert took < 60, took
    for unit in UNITS:
        assert falcon.box.show(unit, "NRestarts") == "0", falcon.box.journal(unit)

    def shipped() -> bool:  # the shipper, hardened as it is, lands the audit record
        with psycopg2.connect(falcon.dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM audit.predictions WHERE request_id = %s",
                        ("sysd-first-prediction",))
            row = cur.fetchone()
        conn.close()
        return bool(row and row[0] == 1)

    wait_until(shipped, 30, "the prediction's audit row in PostgreSQL", interval=0.3)


def uid_of(falcon: Falcon, user: str) -> int:
    return int(falcon.box.run(["id", "-u", user]).stdout)


def uids(falcon: Falcon, unit: str) -> set[tuple[int, ...]]:
    """The (real, effective, saved, filesystem) uids of every process of ``unit``."""
    out = set()
    for pid in falcon.box.unit_pids(unit):
        status = falcon.box.run(["cat", f"/proc/{pid}/status"], check=False).stdout
        line = [ln for ln in status.splitlines() if ln.startswith("Uid:")]
        if line:
            out.add(tuple(int(u) for u in line[0].split()[1:]))
    return out


def in_unit(falcon: Falcon, unit: str, user: str, script: str) -> tuple[int, str]:
    """Run ``sh -c script`` as ``user`` in ``unit``'s mount namespace (what its
    processes see: ReadOnlyPaths= and the rest); exit status and output."""
    pid = main_pid(falcon, unit)
    assert pid, unit
    done = falcon.box.run(["nsenter", "-t", str(pid), "-m", "--", "setpriv", f"--reuid={user}",
                           f"--regid={user}", "--clear-groups", "--", "sh", "-c", script],
                          check=False)
    return done.returncode, done.stdout + done.stderr


def test_each_unit_holds_only_what_it_needs(falcon: Falcon):
    """Issue 15 item 11: HAProxy runs as its own user, with no access to the
    falcon user's files, its admin socket limited to its group; the edge and the
    gRPC face cannot write the models, the keys file or the secrets (only their WAL),
    while the daemon still can write the repository; and the stack serves, and
    `falconctl hosts` and a graceful reload of HAProxy still work."""
    started(falcon)
    box = falcon.box
    box.run([FALCONCTL, "keys", "create", "--name", "sysd-privileges"])  # the keys file exists
    falcon_uid, haproxy_uid = uid_of(falcon, "falcon"), uid_of(falcon, "falcon-haproxy")
    assert falcon_uid != haproxy_uid
    assert uids(falcon, "falcon-haproxy.service") == {(haproxy_uid,) * 4}
    for unit in ("falcon-edge.service", "falcon-daemon.service", "falcon-shipper.service"):
        assert uids(falcon, unit) == {(falcon_uid,) * 4}, unit

    for unit in ("falcon-edge.service", "falcon-grpc.service"):
        for path in ("/var/lib/falcon/models/digits/probe", "/var/lib/falcon/keys.json",
                     "/var/lib/falcon/proxy.secret", "/var/lib/falcon/cache.secret"):
            rc, out = in_unit(falcon, unit, "falcon", f"echo x >> {path}")
            assert rc != 0 and "Read-only file system" in out, (unit, path, out)
        rc, out = in_unit(falcon, unit, "falcon", "cat /var/lib/falcon/keys.json >/dev/null && "
                          "touch /var/lib/falcon/wal/.probe && rm /var/lib/falcon/wal/.probe")
        assert rc == 0, (unit, out)  # reads the keys, writes its WAL
    rc, out = in_unit(falcon, "falcon-daemon.service", "falcon",
                      "touch /var/lib/falcon/models/digits/.probe && "
                      "rm /var/lib/falcon/models/digits/.probe")
    assert rc == 0, out  # the daemon writes traffic.json there
    # HAProxy's user reaches nothing of falcon's: not the state, not the daemon socket
    for path in ("/var/lib/falcon/keys.json", "/var/lib/falcon/proxy.secret",
                 "/run/falcon/daemon.sock"):
        rc, out = in_unit(falcon, "falcon-haproxy.service", "falcon-haproxy", f"cat {path}")
        assert rc != 0 and "Permission denied" in out, (path, out)

    # the runtime API: 0660 in HAProxy's group; the falcon user is refused, root is not
    sock = "/run/falcon-haproxy/haproxy.sock"
    assert box.run(["stat", "-c", "%a %U %G", sock]).stdout.split() == \
        ["660", "falcon-haproxy", "falcon-haproxy"]
    probe = f"import socket; socket.socket(socket.AF_UNIX).connect({sock!r})"
    refused = box.run(["setpriv", "--reuid=falcon", "--regid=falcon", "--clear-groups", "--",
                       str(VENV / "bin" / "python"), "-c", probe], check=False)
    assert refused.returncode != 0 and "PermissionError" in refused.stderr, refused
    listing = box.run([FALCONCTL, "hosts", "list"]).stdout
    assert "edge1" in listing and "UP" in listing, listing

    # a graceful reload (the master re-executes; listeners handed over) keeps the user
    unit = "falcon-haproxy.service"
    pid = main_pid(falcon, unit)
    box.systemctl("reload", unit)
    # systemctl reload can return while the unit still says "reloading" (HAProxy's master
    # reports READY=1 once its new workers run): wait for it, then it is the same master
    wait_until(lambda: box.show(unit, "ActiveState") == "active", 30, "HAProxy active again")
    assert main_pid(falcon, unit) == pid
    serves_again(falcon, "after reloading HAProxy")
    assert uids(falcon, unit) == {(haproxy_uid,) * 4}


def test_daemon_killed_with_sigkill_is_restarted_and_serves_again(falcon: Falcon):
    started(falcon)
    box, unit = falcon.box, "falcon-daemon.service"
    old, restarts = main_pid(falcon, unit), int(box.show(unit, "NRestarts"))
    box.systemctl("kill", "-s", "KILL", unit)
    restarted(falcon, unit, old, timeout=30)
    assert int(box.show(unit, "NRestarts")) == restarts + 1
    serves_again(falcon, "after the daemon's restart")
    # the new daemon re-attached to the segments the killed one left
    assert "re-attached" in box.journal(unit, 20)


def test_restarting_one_unit_keeps_the_others_sockets_in_run_falcon(falcon: Falcon):
    """Every unit declares RuntimeDirectory=falcon with RuntimeDirectoryPreserve=yes:
    a unit that stops or restarts does not take /run/falcon with it."""
    started(falcon)
    box = falcon.box

    def sockets() -> set[str]:
        names = box.run(["ls", "-1", "/run/falcon"]).stdout.split()
        return {n for n in names if n.endswith((".sock", ".ctl"))}
    before = sockets()
    assert "daemon.sock" in before and any(n.endswith(".ctl") for n in before)
    assert "haproxy.sock" not in before  # HAProxy's is in its own /run/falcon-haproxy
    box.systemctl("restart", "falcon-shipper.service")
    box.systemctl("stop", "falcon-haproxy.service")
    assert before <= sockets()
    started(falcon)
    assert sockets() == before
    serves_again(falcon, "after restarting the shipper and HAProxy")


def test_hung_daemon_is_killed_by_the_watchdog_and_restarted(falcon: Falcon):
    started(falcon)
    box, unit = falcon.box, "falcon-daemon.service"
    old, restarts = main_pid(falcon, unit), int(box.show(unit, "NRestarts"))
    t0 = time.monotonic()
    box.systemctl("kill", "-s", "STOP", unit)  # alive, silent: only the watchdog notices
    restarted(falcon, unit, old, timeout=30)
    took = time.monotonic() - t0
    log = box.journal(unit, 40)
    assert "Watchdog timeout" in log, log
    assert int(box.show(unit, "NRestarts")) == restarts + 1
    assert took >= 3.5, took  # WatchdogSec=4s (drop-in): not killed before it expired
    serves_again(falcon, "after the watchdog restart")


def test_hung_edge_arbiter_is_killed_by_the_edge_watchdog(falcon: Falcon):
    """gunicorn never pings: edge/watchdog.py does, from the arbiter, only while
    the arbiter's loop turns. Stop the arbiter alone: its workers keep serving,
    but the pings stop, and systemd kills and restarts the whole edge."""
    started(falcon)
    box, unit = falcon.box, "falcon-edge.service"
    old = main_pid(falcon, unit)
    box.systemctl("kill", "--kill-who=main", "-s", "STOP", unit)
    restarted(falcon, unit, old, timeout=30)
    log = box.journal(unit, 60)
    assert "Watchdog timeout" in log, log
    serves_again(falcon, "after the edge's restart")


def test_edge_reload_under_load_fails_no_request(falcon: Falcon):
    started(falcon)
    box, unit = falcon.box, "falcon-edge.service"
    arbiter = main_pid(falcon, unit)
    old_workers = set(box.unit_pids(unit)) - {arbiter}
    load = LoadGen(falcon.haproxy, DIGITS["X"], threads=3, timeout=10.0).start()
    try:
        time.sleep(1.0)
        box.systemctl("reload", unit)  # ExecReload: gunicorn HUP, a rolling restart

        def rolled() -> bool:
            pids = set(box.unit_pids(unit)) - {arbiter}
            return not (pids & old_workers) and len(pids) >= 2
        wait_until(rolled, 45, "old workers replaced by new ones", interval=0.2)
        time.sleep(1.0)
    finally:
        outcomes = load.stop()
    counts: dict[int, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    assert set(counts) == {200} and counts[200] > 20, counts
    assert main_pid(falcon, unit) == arbiter  # reloaded, not restarted
    assert box.show(unit, "ActiveState") == "active"


def test_haproxy_over_a_hosts_list_under_systemd(falcon: Falcon):
    """haproxy.hosts set: the unit's ExecStartPre renders ops/haproxy/hosts.cfg
    into /run/falcon and HAProxy loads both files ($FALCON_HAPROXY_FILES); the
    edge, listed as a host, serves through backend 'hosts'; `falconctl hosts`
    drains and readies it through the runtime API."""
    started(falcon)
    box, conf = falcon.box, "/etc/falcon/falcon.toml"
    original = box.read(conf)
    config = tomllib.loads(original)
    config["haproxy"]["hosts"] = f"host-local={falcon.edge}"
    box.write(conf, dump_toml(config))
    try:
        box.systemctl("restart", "falcon-haproxy.service")
        assert "server host-local" in box.read("/run/falcon-haproxy/haproxy-hosts.cfg")
        serves_again(falcon, "through backend 'hosts'")
        listing = box.run([FALCONCTL, "hosts", "list"]).stdout
        assert "host-local" in listing and "UP" in listing, listing
        box.run([FALCONCTL, "hosts", "maint", "host-local"])
        assert predict(falcon.haproxy).status == 503  # no host left in rotation
        box.run([FALCONCTL, "hosts", "ready", "host-local"])
        serves_again(falcon, "after 'falconctl hosts ready'")
    finally:
        box.write(conf, original)
        box.systemctl("restart", "falcon-haproxy.service")
    serves_again(falcon, "back on backend 'edges'")


def one(spans: list[Span], **want: str) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in want.items())]
    assert len(found) == 1, (want, [(s.service, s.name, s.parent_id) for s in spans])
    return found[0]


def test_the_daemons_spans_reach_a_collector_on_loopback(falcon: Falcon):
    """Issue 18 item 1 as installed: the daemon's unit reaches loopback only
    (IPAddressAllow=localhost), where a host's collector agent listens, so a request
    through HAProxy is one trace holding the daemon's queue and batch spans under the
    edge's daemon call."""
    started(falcon)
    box, conf = falcon.box, "/etc/falcon/falcon.toml"
    original = box.read(conf)
    config = tomllib.loads(original)
    units = ("falcon-daemon.service", "falcon-edge.service")
    try:
        with OtlpReceiver() as rx:  # on the host's 127.0.0.1: the sandbox shares its network
            config["tracing"] = {"endpoint": rx.url, "sample_ratio": 1.0}
            box.write(conf, dump_toml(config))
            box.systemctl("restart", *units, timeout=150)
            serves_again(falcon, "with tracing on")
            ans = predict(falcon.haproxy, rid="sysd-traced")
            assert ans.status == 200, ans.body
            trace_id = ans.headers["traceparent"].split("-")[1]
            wanted = {"daemon infer", "daemon queue", "daemon batch"}
            try:
                spans = rx.wait_for(lambda spans: wanted <= {s.name for s in spans
                                                             if s.trace_id == trace_id})
            except AssertionError as exc:
                pytest.fail(f"{exc}\n{box.journal('falcon-daemon.service')}")
        spans = [s for s in spans if s.trace_id == trace_id]
        server = one(spans, kind="SERVER")
        assert server.service.endswith("-edge") and server.attributes["falcon.request_id"] == \
            "sysd-traced"
        call = one(spans, name="daemon infer")
        assert call.parent_id == server.span_id and call.service.endswith("-edge")
        for name in ("daemon queue", "daemon batch"):
            span = one(spans, name=name)
            assert span.service.endswith("-daemon") and span.parent_id == call.span_id, span
    finally:
        box.write(conf, original)
        box.systemctl("restart", *units, timeout=150)
    serves_again(falcon, "with tracing off again")


def host_address() -> str:
    """One of this host's IPv4 addresses off loopback (the sandbox shares its network)."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    addresses = [line.split()[3].partition("/")[0] for line in out.splitlines()]
    if not addresses:
        pytest.skip("no IPv4 address off loopback on this host to play a remote collector")
    return addresses[0]


def traced_request(falcon: Falcon, rx: OtlpReceiver, rid: str) -> tuple[str, list[Span]]:
    """A prediction through HAProxy; its trace id and its spans once the edge's are in."""
    ans = predict(falcon.haproxy, rid=rid)
    assert ans.status == 200, ans.body
    trace_id = ans.headers["traceparent"].split("-")[1]
    spans = rx.wait_for(lambda spans: any(s.trace_id == trace_id and s.name == "daemon infer"
                                          for s in spans))
    return trace_id, spans


def test_a_collector_off_the_host_is_reached_through_the_installs_dropin(falcon: Falcon):
    """The daemon's unit blocks a collector on a non-loopback address (the edge's spans
    arrive, the daemon's never do) until `falconctl install` allows that address in
    falcon-daemon.service.d/tracing.conf (falconctl/tracing_dropin.py); then the
    daemon's spans are in the trace. Tracing off again: the install removes it."""
    started(falcon)
    box, conf = falcon.box, "/etc/falcon/falcon.toml"
    original = box.read(conf)
    config = tomllib.loads(original)
    units = ("falcon-daemon.service", "falcon-edge.service")
    dropin, address = "/etc/systemd/system/falcon-daemon.service.d/tracing.conf", host_address()
    try:
        with OtlpReceiver(host=address) as rx:
            config["tracing"] = {"endpoint": rx.url, "sample_ratio": 1.0}
            box.write(conf, dump_toml(config))
            box.systemctl("restart", *units, timeout=150)
            serves_again(falcon, "with tracing to a remote collector")
            blocked, _ = traced_request(falcon, rx, "sysd-remote-blocked")
            time.sleep(1.5)  # the daemon exports every 0.5 s; nothing of it gets through
            assert not [s for s in rx.snapshot()
                        if s.trace_id == blocked and s.service.endswith("-daemon")]

            report = box.run([FALCONCTL, "install"], timeout=120).stdout
            assert f"created    {dropin}" in report and "systemctl daemon-reload" in report, \
                report
            allowed = box.show("falcon-daemon.service", "IPAddressAllow").split()
            assert f"{address}/32" in allowed and "127.0.0.0/8" in allowed, allowed
            done = box.run(["systemd-analyze", "verify",
                            "/etc/systemd/system/falcon-daemon.service"], check=False, timeout=120)
            assert (done.returncode, done.stdout + done.stderr) == (0, "")
            box.systemctl("restart", "falcon-daemon.service", timeout=150)
            serves_again(falcon, "after the drop-in")
            trace_id, _ = traced_request(falcon, rx, "sysd-remote-allowed")
            try:
                spans = rx.wait_for(lambda spans: {"daemon queue", "daemon batch"} <= {
                    s.name for s in spans if s.trace_id == trace_id})
            except AssertionError as exc:
                pytest.fail(f"{exc}\n{box.journal('falcon-daemon.service')}")
        spans = [s for s in spans if s.trace_id == trace_id]
        call = one(spans, name="daemon infer")
        for name in ("daemon queue", "daemon batch"):
            span = one(spans, name=name)
            assert span.service.endswith("-daemon") and span.parent_id == call.span_id, span
    finally:
        box.write(conf, original)
        report = box.run([FALCONCTL, "install"], timeout=120).stdout
        box.systemctl("restart", *units, timeout=150)
    assert f"removed    {dropin}" in report, report  # tracing off again: no drop-in left
    assert f"{address}/32" not in box.show("falcon-daemon.service", "IPAddressAllow")
    serves_again(falcon, "with tracing off again")


def test_stop_leaves_no_process_and_no_segment(falcon: Falcon):
    started(falcon)
    assert falcon.segments(), "the running daemon should hold its segments"
    box = falcon.box
    box.systemctl("stop", "falcon.target")  # returns once the stop jobs are queued

    def all_stopped() -> bool:
        return all(box.show(u, "ActiveState") in ("inactive", "failed") for u in UNITS)
    wait_until(all_stopped, 90, "every falcon unit stopped", interval=0.2)
    for unit in UNITS:
        assert box.show(unit, "ActiveState") == "inactive", box.journal(unit)
        assert box.unit_pids(unit) == [], unit
    leftover = {cg: pids for cg, pids in box.all_pids().items()
                if cg not in ("init.scope", "system.slice/systemd-journald.service")}
    assert leftover == {}, leftover
    assert falcon.segments() == []
