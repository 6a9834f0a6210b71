"""``falconctl hosts`` (fleet/cli.py) as an operator runs it, against the real
PostgreSQL fixture and no stack: its exit statuses (0 converged, 1 refused, 5
written but not converged), "no host reported" never counted as converged, and
a database that refuses (a read-only role: a standby) as one line."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import psycopg2
import pytest

from fleet.errors import NOT_CONVERGED_EXIT, REFUSED_EXIT
from fleet.plan import Actual
from fleet.store import FleetStore
from tests.pg_fixture import fresh_database
from tests.stacks import ROOT


def hosts(dsn: str, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "FALCON_FLEET_DSN": dsn, "FALCON_HOST_ID": "host-x",
           "FALCON_HAPROXY_HOSTS": "", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "falconctl", "hosts", *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def sql(dsn: str, statement: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture
def dsn(pg_cluster: Any, request: pytest.FixtureRequest) -> str:
    return fresh_database(pg_cluster, request.node.name)


@pytest.fixture
def read_only_dsn(dsn: str) -> Any:
    role = f"ro_{uuid.uuid4().hex[:8]}"
    sql(dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    sql(dsn, f"ALTER ROLE {role} SET default_transaction_read_only = on")
    yield f"{dsn} user={role} password=pw", role
    sql(dsn, f"DROP OWNED BY {role}")
    sql(dsn, f"DROP ROLE {role}")


def test_exit_statuses_never_claim_a_convergence_that_did_not_happen(dsn: str) -> None:
    # no host reported and haproxy.hosts empty: this host (host.id) is expected; before,
    # nothing was expected and "every host converged" came back with exit 0
    out = hosts(dsn, "load", "m", "1", "--wait", "1")
    assert out.returncode == NOT_CONVERGED_EXIT == 5, out.stdout + out.stderr
    assert "revision 1: load m" in out.stdout and "not converged after 1 s: host-x" in out.stdout
    status = hosts(dsn, "status")
    assert status.returncode == NOT_CONVERGED_EXIT, status.stdout
    assert "host-x" in status.stdout and "NO REPORT" in status.stdout
    # refused (nothing written) is not "not converged"
    refused = hosts(dsn, "unload", "m", "1")
    assert refused.returncode == REFUSED_EXIT == 1 and "carries 100" in refused.stderr
    store = FleetStore(dsn)
    try:
        store.report("host-x", 1, True, {"m": Actual(("1",), {"1": 100})}, "", 1.0, [], {"m"})
    finally:
        store.close()
    assert hosts(dsn, "status").returncode == 0
    assert hosts(dsn, "split", "m", "1=100", "--wait", "5").returncode == 0  # unchanged


def test_a_database_that_refuses_is_one_line_and_readers_need_no_write_grant(
        dsn: str, read_only_dsn: tuple[str, str]) -> None:
    rdsn, role = read_only_dsn
    assert hosts(dsn, "load", "m", "1").returncode == 0  # an owner migrates and writes
    sql(dsn, f"GRANT USAGE ON SCHEMA fleet, audit TO {role}")
    sql(dsn, f"GRANT SELECT ON ALL TABLES IN SCHEMA fleet, audit TO {role}")
    assert hosts(rdsn, "history").returncode == 0  # a current schema: checked, not migrated
    out = hosts(rdsn, "split", "m", "1=100")
    assert out.returncode == REFUSED_EXIT, out.stdout + out.stderr
    [line] = out.stderr.splitlines()  # one line, no traceback
    assert line.startswith("falconctl hosts split: PostgreSQL refused:") and "read-only" in line
