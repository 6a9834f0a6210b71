"""The multi-host harness shared by tests/integration/test_multihost.py and
bench/multihost.py: three network namespaces on a bridge of their own
(tests/netns.py)::

    front  10.213.0.1   HAProxy (ops/haproxy/hosts.cfg), 2 memcached, PostgreSQL
    host-a 10.213.0.2   daemon, edge, shipper, WAL
    host-b 10.213.0.3   daemon, edge, shipper, WAL

Fixed ports are fine: every namespace has its own. The test process reaches
them only from threads that entered the front namespace.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psycopg2

import shm
from audit.pg import EmbeddedPostgres
from falconctl.keys import haproxy_command
from tests.httpx_lite import post_json
from tests.netns import NetStack, Network, entered
from tests.pg_fixture import make_root
from tests.stacks import make_repo, stack_env

ROOT = Path(__file__).resolve().parents[1]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")
EDGE_PORT, HAPROXY_PORT, STATS_PORT, PG_PORT = 8000, 8080, 8404, 5432
MEMCACHED_PORTS = (11211, 11212)


@contextmanager
def front_postgres(net: Network) -> Iterator[EmbeddedPostgres]:
    """PostgreSQL in the front namespace with database ``falcon`` (``pg.dsn("falcon")``);
    a test may stop and start it."""
    root = make_root("falcon-mh-pg-")
    pg = EmbeddedPostgres(root / "data", PG_PORT, socket_dir=root / "sock",
                          host=net.addr("front"), wrap=net.wrap("front"))
    try:
        pg.init()
        # APPSEC: trust on the test's private /24 only (a namespace nothing else reaches)
        with open(pg.data_dir / "pg_hba.conf", "a", encoding="utf-8") as hba:
            hba.write(f"host all all 10.{net.subnet}.0.0/24 trust\n")
        pg.start()
        with entered(net.ns("front")):
            pg.create_database("falcon")
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def front_services(net: Network) -> Iterator[str]:
    """PostgreSQL and two memcached servers in the front namespace; the audit DSN."""
    memcached: list[subprocess.Popen] = []
    with front_postgres(net) as pg:
        try:
            for port in MEMCACHED_PORTS:
                memcached.append(subprocess.Popen(
                    [*net.wrap("front"), "memcached", "-u", "nobody", "-l", net.addr("front"),
                     "-p", str(port), "-U", "0", "-m", "32"]))
            yield pg.dsn("falcon")
        finally:
            for proc in memcached:
                proc.kill()
                proc.wait(10)


def cache_on(repo: Path) -> Path:
    """The digits model with its prediction cache on (it ships off)."""
    config = repo / "digits" / "config.toml"
    config.write_text(config.read_text().replace("enabled = false", "enabled = true", 1))
    return repo


def front_stack(net: Network, tmp: Path, hosts: list[str]) -> NetStack:
    """HAProxy in the front namespace over the edges of ``hosts``."""
    tmp.mkdir(parents=True, exist_ok=True)
    return NetStack(stack_env(
        tmp, tmp / "models", FALCON_HOST_ID="front",
        FALCON_HAPROXY_BIND=f"{net.addr('front')}:{HAPROXY_PORT}",
        FALCON_HAPROXY_STATS_BIND=f"{net.addr('front')}:{STATS_PORT}",
        FALCON_HAPROXY_HOSTS=",".join(f"host-{h}={net.addr(h)}:{EDGE_PORT}" for h in hosts),
        FALCON_EDGE_PROXY_SECRET_FILE=shared_secret(tmp)),
        tmp / "logs", netns=net.ns("front"))


def shared_secret(tmp: Path) -> str:
    """The proxy secret file the front and its hosts share (each host's copy of
    the front's, as an operator would make it): beside their directories."""
    return str(tmp.parent / "proxy.secret")


def host_stack(net: Network, tmp: Path, host: str, dsn: str, cache: bool = True) -> NetStack:
    """Daemon, edge and shipper of serving host ``host`` (digits with its cache
    on, unless ``cache`` is false), auditing into ``dsn``."""
    caches = ",".join(f"{net.addr('front')}:{p}" for p in MEMCACHED_PORTS)
    repo = make_repo(tmp / "models")
    env = stack_env(tmp, cache_on(repo) if cache else repo,
                    FALCON_HOST_ID=f"host-{host}",
                    FALCON_EDGE_BIND=f"{net.addr(host)}:{EDGE_PORT}",
                    FALCON_AUDIT_DSN=dsn, FALCON_AUDIT_SHIP_BATCH="50",
                    FALCON_CACHE_SERVERS=caches, FALCON_EDGE_PROXY_SECRET_FILE=shared_secret(tmp),
                    FALCON_CACHE_SECRET_FILE=str(tmp.parent / "cache.secret"))
    return NetStack(env, tmp / "logs", netns=net.ns(host))


def start_host(stack: NetStack) -> None:
    stack.start_shipper()  # first: a returning host ships its WAL tail while the rest starts
    stack.start_daemon()
    stack.start_edge()


def stop_all(front: NetStack, hosts: Iterable[NetStack]) -> list[str]:
    """Stop the front and every host (in a test's ``finally``); the shared-memory
    segments they left behind, unlinked: the caller asserts the list is empty
    once its own assertions passed."""
    hosts = list(hosts)
    front.stop()
    for stack in hosts:
        stack.stop()
    leaked = [name for stack in hosts
              for name in shm.list_segments(stack.env["FALCON_DAEMON_SHM_PREFIX"])]
    for name in leaked:
        shm.unlink(name)
    return leaked


def server_status(front: NetStack) -> dict[str, str]:
    """HAProxy's view of backend ``hosts``: server name -> UP / DOWN / ..."""
    sock = Path(front.settings.haproxy_socket)
    rows = csv.DictReader(io.StringIO(haproxy_command(sock, "show stat").lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows
            if r["pxname"] == "hosts" and r["svname"] not in ("FRONTEND", "BACKEND")}


def wait_status(front: NetStack, host: str, status: str, timeout: float = 20.0,
                exact: bool = False) -> float:
    """Seconds until HAProxy reports ``host`` as ``status`` (``exact``: not in
    transition, e.g. not "UP 1/2", one check failed)."""
    start = time.monotonic()
    while (server_status(front).get(host, "") if exact
           else (server_status(front).get(host) or "?").split()[0]) != status:
        assert time.monotonic() - start < timeout, server_status(front)
        time.sleep(0.02)
    return time.monotonic() - start


def audit_rows(net: Network, dsn: str) -> dict[str, list[tuple]]:
    """request_id -> its rows (host, stream, unix ts)."""
    with entered(net.ns("front")):
        conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT request_id, host, stream, extract(epoch FROM ts)::float8 "
                        "FROM audit.predictions")
            out: dict[str, list[tuple]] = {}
            for rid, *row in cur.fetchall():
                out.setdefault(rid, []).append(tuple(row))
            return out
    finally:
        conn.close()


def wait_rows(net: Network, dsn: str, expected: set[str],
              timeout: float = 60.0) -> tuple[dict[str, list[tuple]], float]:
    start = time.monotonic()
    while True:
        rows = audit_rows(net, dsn)
        if expected <= set(rows):
            return rows, time.monotonic() - start
        assert time.monotonic() - start < timeout, f"{len(expected - set(rows))} rows missing"
        time.sleep(0.1)


def predict(net: Network, host: str, rows: np.ndarray) -> dict:
    with entered(net.ns("front")):
        ans = post_json(f"{net.addr(host)}:{EDGE_PORT}", "/v1/models/digits/predict",
                        {"instances": rows.tolist()})
    assert ans.status == 200, ans.body
    return ans.json()


