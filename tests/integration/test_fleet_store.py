"""fleet.store against a real PostgreSQL: revisions and their history, the
refusal to unload a version with traffic, rollbacks (retry-safe with
--to-revision), concurrent writers (one lock, a revision precondition), each
change in audit.events once, host reports, and LISTEN/NOTIFY."""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
import pytest

from fleet.errors import (
    CarriesTraffic,
    DatabaseError,
    FleetUnavailable,
    InvalidChange,
    SchemaNotCurrent,
    SplitDisagreement,
    StaleRevision,
)
from fleet.plan import Actual
from fleet.store import FleetStore, Listener, connect
from tests.pg_fixture import fresh_database

WHO = "falconctl:test (uid 0) on here"


@pytest.fixture
def dsn(pg_cluster: Any, request: pytest.FixtureRequest) -> str:
    return fresh_database(pg_cluster, request.node.name)


@pytest.fixture
def store(dsn: str) -> Any:
    s = FleetStore(dsn)
    s.migrate()
    yield s
    s.close()


def query(dsn: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def events(dsn: str) -> list[tuple[Any, ...]]:
    return query(dsn, "SELECT kind, actor, model, detail->'revision', detail->'old', "
                      "detail->'new' FROM audit.events ORDER BY id")


def test_each_change_is_a_revision_with_its_history_and_one_audit_event(
        store: FleetStore, dsn: str) -> None:
    assert store.desired().revision == 0 and store.desired().models == {}
    first = store.change("load", "digits", WHO, version="1")
    assert first is not None and (first.revision, first.old) == (1, None)
    assert first.new == {"versions": ["1"], "split": {"1": 100}}
    second = store.change("load", "digits", WHO, version="2")
    assert second is not None and second.new == {"versions": ["1", "2"], "split": {"1": 100}}
    third = store.change("split", "digits", WHO, split={"1": 90, "2": 10})
    assert third is not None and third.revision == 3
    # the same change again writes nothing (a retried command is harmless)
    assert store.change("split", "digits", WHO, split={"1": 90, "2": 10}) is None
    assert store.change("load", "digits", WHO, version="2") is None
    desired = store.desired()
    assert desired.revision == 3
    assert desired.models["digits"].to_json() == {"versions": ["1", "2"],
                                                  "split": {"1": 90, "2": 10}}
    assert [(c.revision, c.op, c.actor, c.old, c.new) for c in store.history("digits")] == [
        (1, "load", WHO, None, first.new),
        (2, "load", WHO, first.new, second.new),
        (3, "split", WHO, second.new, third.new)]
    assert events(dsn) == [
        ("fleet.load", WHO, "digits", 1, None, first.new),
        ("fleet.load", WHO, "digits", 2, first.new, second.new),
        ("fleet.split", WHO, "digits", 3, second.new, third.new)]


def test_unloading_a_version_that_carries_traffic_is_refused(store: FleetStore,
                                                            dsn: str) -> None:
    store.change("load", "m", WHO, version="1")
    store.change("load", "m", WHO, version="2")
    store.change("split", "m", WHO, split={"1": 50, "2": 50})
    with pytest.raises(CarriesTraffic, match="carries 50"):
        store.change("unload", "m", WHO, version="2")
    with pytest.raises(InvalidChange) as err:
        store.change("split", "m", WHO, split={"3": 100})
    assert err.value.field == "split"
    assert store.desired().revision == 3 and len(events(dsn)) == 3  # nothing written
    store.change("split", "m", WHO, split={"1": 100})
    # a live host that has not converged yet still routes to 2: refused there too
    store.report("host-a", 4, False, {"m": Actual(("1", "2"), {"1": 50, "2": 50})}, "", 1.0,
                 [], {"m"})
    with pytest.raises(CarriesTraffic, match="still carries traffic on host-a"):
        store.change("unload", "m", WHO, version="2")
    store.report("host-a", 4, True, {"m": Actual(("1", "2"), {"1": 100})}, "", 1.0, [], {"m"})
    done = store.change("unload", "m", WHO, version="2")
    assert done is not None and done.new == {"versions": ["1"], "split": {"1": 100}}
    assert store.change("unload", "m", WHO, version="2") is None  # already so


def test_rollback_goes_back_one_split_write_and_to_revision_is_retry_safe(
        store: FleetStore) -> None:
    store.change("load", "m", WHO, version="1")                  # r1 {1: 100}
    store.change("load", "m", WHO, version="2")                  # r2
    store.change("split", "m", WHO, split={"1": 80, "2": 20})    # r3
    store.change("split", "m", WHO, split={"1": 50, "2": 50})    # r4
    back = store.change("rollback", "m", WHO)
    assert back is not None and (back.revision, back.target) == (5, 3)
    assert back.new["split"] == {"1": 80, "2": 20}
    # the client did not see the answer and retries the absolute form: no second step back
    assert store.change("rollback", "m", WHO, to_revision=3) is None
    assert store.desired().models["m"].split == {"1": 80, "2": 20}
    again = store.change("rollback", "m", WHO)                   # one more step
    assert again is not None and again.new["split"] == {"1": 100} and again.target == 2
    with pytest.raises(InvalidChange, match="nothing to roll back"):
        store.change("rollback", "m", WHO)
    with pytest.raises(InvalidChange, match="not in the fleet"):
        store.change("rollback", "other", WHO)
    for op, args in (("split", {"split": {"1": 100}}), ("unload", {"version": "1"})):
        with pytest.raises(InvalidChange, match="no host reports running it") as err:
            store.change(op, "other", WHO, **args)  # type: ignore[arg-type]
        assert err.value.field == "model"


def test_concurrent_writers_are_serialized_and_a_precondition_loses_cleanly(
        store: FleetStore, dsn: str) -> None:
    store.change("load", "m", WHO, version="1")
    store.change("load", "m", WHO, version="2")
    head = store.desired().revision
    results: list[Any] = []

    def writer(weight: int) -> None:
        s = FleetStore(dsn)
        try:
            results.append(s.change("split", "m", f"writer-{weight}",
                                    split={"1": weight, "2": 100 - weight}, if_revision=head))
        except StaleRevision as exc:
            results.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in (10, 20, 30, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    won = [r for r in results if not isinstance(r, Exception)]
    assert len(won) == 1 and won[0].revision == head + 1, results
    assert sum(isinstance(r, StaleRevision) for r in results) == 3
    assert store.desired().revision == head + 1
    # without a precondition every writer lands, one revision each, none lost
    threads = [threading.Thread(target=lambda w=w: FleetStore(dsn).change(
        "split", "m", WHO, split={"1": w, "2": 100 - w})) for w in (1, 2, 3, 4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert store.desired().revision == head + 6
    assert sorted(r for (r,) in query(dsn, "SELECT revision FROM fleet.revisions")) == \
        list(range(1, head + 7))
    assert len(query(dsn, "SELECT 1 FROM audit.events")) == head + 6


def test_a_model_new_to_the_fleet_starts_from_what_hosts_report(store: FleetStore,
                                                                 dsn: str) -> None:
    store.report("host-a", 0, True, {"m": Actual(("1",), {})}, "", 1.0, [], set())
    store.report("host-b", 0, True, {"m": Actual(("1",), {})}, "", 1.0, [], set())
    done = store.change("load", "m", WHO, version="2")
    assert done is not None and done.old == {"versions": ["1"], "split": {"1": 100}}
    assert done.new == {"versions": ["1", "2"], "split": {"1": 100}}  # 2 gets no traffic
    [(joins,)] = query(dsn, "SELECT detail->'joins_fleet' FROM audit.events")
    assert joins is True


def test_a_joining_model_the_hosts_route_differently_needs_an_explicit_split(
        store: FleetStore, dsn: str) -> None:
    store.report("host-a", 0, True, {"m": Actual(("1", "2"), {"1": 100})}, "", 1.0, [], set())
    store.report("host-b", 0, True, {"m": Actual(("1", "2"), {})}, "", 1.0, [], set())
    with pytest.raises(SplitDisagreement) as err:  # before: {"2": 100} everywhere
        store.change("load", "m", WHO, version="3")
    assert "host-a route {'1': 100}; host-b route {'2': 100}" in str(err.value)
    assert store.desired().revision == 0 and query(dsn, "SELECT 1 FROM audit.events") == []
    done = store.change("split", "m", WHO, split={"1": 100})
    assert done is not None and done.joins and done.new == {"versions": ["1", "2"],
                                                           "split": {"1": 100}}
    done = store.change("load", "m", WHO, version="3")
    assert done is not None and done.new["split"] == {"1": 100}


def test_a_host_report_records_each_change_on_it_once(store: FleetStore, dsn: str) -> None:
    store.change("load", "m", WHO, version="1")
    before = {"m": Actual(("1",), {}), "other": Actual(("3",), {})}
    assert store.report("host-a", 1, False, before, "", 2.0, [], {"m"}) is None  # first report
    after = {"m": Actual(("1",), {"1": 100}), "other": Actual(("3",), {"3": 1})}
    event = store.report("host-a", 1, True, after, "", 2.0, [["m", "split", {"1": 100}]], {"m"})
    assert event is not None and event["old"] == {"m": {"versions": ["1"], "split": {}}}
    # the same again (a heartbeat), the daemon unreachable, an unmanaged model: no event
    assert store.report("host-a", 1, True, after, "", 2.0, [], {"m"}) is None
    assert store.report("host-a", 1, False, None, "daemon: down", 2.0, [], {"m"}) is None
    assert store.report("host-a", 1, True, {**after, "other": Actual(("3",), {})}, "", 2.0,
                        [], {"m"}) is None
    [row] = store.hosts()
    assert (row.host, row.seen, row.converged, row.error, row.stale) == ("host-a", 1, 1, "", False)
    assert row.actual["m"] == Actual(("1",), {"1": 100})
    # a host's first report: its change is measured from what it ran before its steps
    assert store.report("host-b", 1, True, after, "", 2.0, [["m", "split", {"1": 100}]], {"m"},
                        initial=before) is not None
    assert query(dsn, "SELECT kind, actor, host, model, detail->'revision' FROM audit.events "
                      "WHERE kind = 'fleet.applied' ORDER BY id") == [
        ("fleet.applied", "reconciler@host-a", "host-a", "m", 1),
        ("fleet.applied", "reconciler@host-b", "host-b", "m", 1)]
    assert store.forget("host-a") and [r.host for r in store.hosts()] == ["host-b"]


def test_listeners_are_woken_by_a_change(store: FleetStore, dsn: str) -> None:
    listener = Listener(dsn)
    try:
        assert listener.wait(0.1) is True  # the first call connects: read the state anyway
        assert listener.wait(0.2) is False
        store.change("load", "m", WHO, version="1")
        assert listener.wait(5.0) is True
        assert listener.wait(0.1) is False
    finally:
        listener.close()


def test_an_unreachable_database_is_fleet_unavailable() -> None:
    from falconctl.stack import free_port

    dsn = f"host=127.0.0.1 port={free_port()} dbname=x user=x connect_timeout=1"
    with pytest.raises(FleetUnavailable):
        FleetStore(dsn).desired()
    with pytest.raises(FleetUnavailable):
        Listener(dsn).wait(0.1)


@pytest.fixture
def reconciler_dsn(store: FleetStore, dsn: str) -> Any:
    """A least-privilege reconciler role (docs/several-hosts.md): reads the fleet
    state, writes only its host report and its audit events; no CREATE."""
    import uuid

    role = f"rec_{uuid.uuid4().hex[:8]}"
    dbname = query(dsn, "SELECT current_database()")[0][0]
    for sql in (f"CREATE ROLE {role} LOGIN PASSWORD 'pw'",
                f"REVOKE CREATE, TEMPORARY ON DATABASE {dbname} FROM PUBLIC",
                f"GRANT USAGE ON SCHEMA fleet, audit TO {role}",
                f"GRANT SELECT ON ALL TABLES IN SCHEMA fleet TO {role}",
                f"GRANT SELECT ON audit.schema_migrations TO {role}",
                f"GRANT INSERT, UPDATE ON fleet.hosts TO {role}",
                f"GRANT INSERT ON audit.events TO {role}",
                f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA audit TO {role}"):
        query(dsn, sql)
    yield role, f"{dsn} user={role} password=pw"
    query(dsn, f"DROP OWNED BY {role}")
    query(dsn, f"DROP ROLE {role}")


def test_the_reconciler_role_checks_the_schema_and_never_needs_create(
        store: FleetStore, dsn: str, reconciler_dsn: tuple[str, str]) -> None:
    role, rdsn = reconciler_dsn
    store.change("load", "m", WHO, version="1")
    rec = FleetStore(rdsn)
    try:
        # before: desired() migrated first, and CREATE SCHEMA IF NOT EXISTS needs CREATE on
        # the database even when the schema exists: InsufficientPrivilege escaped
        assert rec.desired().models["m"].versions == ("1",)
        assert rec.report("host-a", 1, True, {"m": Actual(("1",), {"1": 100})}, "", 1.0,
                          [], {"m"}, initial={"m": Actual(("1",), {})}) is not None
        with pytest.raises(DatabaseError) as err:
            rec.migrate()
        assert err.value.pgcode == "42501" and "permission denied" in str(err.value)
        with pytest.raises(DatabaseError) as err:  # a write it has no grant for
            rec.change("split", "m", WHO, split={"1": 100})
        assert err.value.pgcode == "42501"
        assert rec.desired().revision == 1  # the connection is usable again
    finally:
        rec.close()


def test_a_read_only_database_is_a_database_error_naming_it(
        store: FleetStore, dsn: str, reconciler_dsn: tuple[str, str]) -> None:
    role, rdsn = reconciler_dsn
    query(dsn, f"ALTER ROLE {role} SET default_transaction_read_only = on")  # a standby
    rec = FleetStore(rdsn)
    try:
        assert rec.desired().revision == 0  # reads work
        with pytest.raises(DatabaseError) as err:
            rec.report("host-a", 0, True, {}, "", 1.0, [], set())
        assert err.value.pgcode == "25006" and "read-only transaction" in str(err.value)
        with pytest.raises(DatabaseError, match="read-only"):
            rec.forget("host-a")
    finally:
        rec.close()


def test_an_unmigrated_database_is_schema_not_current_for_a_role_without_create(
        pg_cluster: Any) -> None:
    import uuid

    empty = fresh_database(pg_cluster, "unmigrated")
    role = f"rec_{uuid.uuid4().hex[:8]}"
    dbname = query(empty, "SELECT current_database()")[0][0]
    query(empty, f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    query(empty, f"REVOKE CREATE, TEMPORARY ON DATABASE {dbname} FROM PUBLIC")
    reader = FleetStore(f"{empty} user={role} password=pw")
    try:
        with pytest.raises(SchemaNotCurrent, match="0001_audit_schema.sql.*permission denied"):
            reader.desired()
        assert query(empty, "SELECT to_regnamespace('fleet')") == [(None,)]  # nothing made
    finally:
        reader.close()
        query(empty, f"DROP ROLE {role}")
    owner = FleetStore(empty)  # a role that may: the first pass migrates a fresh database
    try:
        assert owner.desired().revision == 0
    finally:
        owner.close()


def test_a_query_on_a_hung_server_times_out_and_the_connection_has_keepalives(
        dsn: str) -> None:
    import time

    short = FleetStore(dsn, connect=lambda d: connect(d, statement_timeout_s=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(FleetUnavailable, match="statement timeout"):
            with short._tx() as cur:
                cur.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - started < 5
    finally:
        short.close()
    conn = connect(dsn)
    try:
        params = conn.get_dsn_parameters()
        assert (params["keepalives"], params["keepalives_idle"]) == ("1", "10")
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] == "30s"
    finally:
        conn.close()
