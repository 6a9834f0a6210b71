"""audit.store / audit.migrate / audit.pg against a real embedded PostgreSQL."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from audit import migrate
from audit.pg import EmbeddedPostgres, PgStartError
from audit.record import AuditRecord
from audit.store import PgStore, StoreRejected, StoreUnavailable
from tests.pg_fixture import (
    free_port,
    fresh_database,
    make_root,
    running_cluster,
)

DAY1 = datetime(2025, 3, 14, tzinfo=UTC).timestamp()
DAY2 = DAY1 + 86_400

ALL = [m.version for m in migrate.load()]  # every shipped migration, in order


def record(n: int, ts: float = DAY1 + 3600, **fields: Any) -> AuditRecord:
    """A digits prediction: 64 float32 inputs (256 bytes), 10 probabilities."""
    probs = [round((n * 7 + k) % 10 / 45, 6) for k in range(10)]
    inputs = bytes((n + k) % 256 for k in range(256))
    values: dict[str, Any] = dict(
        request_id=f"req-{n:06d}", ts=ts + n / 1000, host="edge-a", model="digits",
        version="1", face="v1", input_digest=hashlib.sha256(inputs).hexdigest(),
        input_meta=[{"name": "input", "dtype": "float32", "shape": [1, 64]}],
        outputs={"probabilities": {"dtype": "float32", "shape": [1, 10], "data": [probs]},
                 "label": {"dtype": "int64", "shape": [1], "data": [n % 10]}},
        labels=[n % 10], cached=n % 3 == 0, latency_ms=1.25 + n, inputs=inputs,
        api_key_id="key-1", trace_id=f"trace-{n}", extra={"replica": 2})
    values.update(fields)
    return AuditRecord(**values)


def batch(count: int, start: int = 0, **fields: Any) -> list[AuditRecord]:
    return [record(n, **fields) for n in range(start, start + count)]


def query(dsn: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def rows_by_partition(dsn: str) -> dict[str, int]:
    return dict(query(dsn, "SELECT c.relname, count(*) FROM audit.predictions p "
                           "JOIN pg_class c ON c.oid = p.tableoid GROUP BY 1"))


@pytest.fixture
def dsn(pg_cluster: EmbeddedPostgres) -> str:
    return fresh_database(pg_cluster, "pg_store")


@pytest.fixture
def store(dsn: str) -> Any:
    with PgStore(dsn) as s:
        s.migrate()
        yield s


# -- migrations ---------------------------------------------------------------------------

def test_migrations_apply_once_then_are_a_no_op(dsn: str) -> None:
    with PgStore(dsn) as store:
        assert store.migrate() == ALL
        assert store.migrate() == []
    assert query(dsn, "SELECT version, name, checksum FROM audit.schema_migrations "
                      "ORDER BY version") == [(m.version, m.name, m.checksum)
                                              for m in migrate.load()]
    tables = {r[0] for r in query(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'audit'")}
    assert {"ship_positions", "events", "schema_migrations"} <= tables
    assert "predictions_default" not in tables


def test_concurrent_migrate_applies_each_version_once(dsn: str) -> None:
    gate = threading.Barrier(4)
    results: list[Any] = []

    def run() -> None:
        with PgStore(dsn) as store:
            gate.wait()
            try:
                results.append(store.migrate())
            except Exception as exc:  # reported below
                results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # no errors, and each version applied by exactly one of them (a migrator may
    # take the lock between two versions another one applies)
    assert all(isinstance(r, list) for r in results), results
    assert sorted(v for r in results for v in r) == ALL, results
    assert query(dsn, "SELECT count(*) FROM audit.schema_migrations") == [(len(ALL),)]


def test_changed_migration_is_refused_naming_the_file(dsn: str, tmp_path: Path) -> None:
    shutil.copytree(migrate.MIGRATIONS_DIR, tmp_path / "m")
    with PgStore(dsn) as store:
        store.migrate(migrate.load(tmp_path / "m"))
        with open(tmp_path / "m" / "0001_audit_schema.sql", "a") as f:
            f.write("\n-- an innocent-looking edit\n")
        with pytest.raises(migrate.ChecksumMismatch, match="0001_audit_schema.sql"):
            store.migrate(migrate.load(tmp_path / "m"))


def test_failed_migration_rolls_back_and_names_the_file(dsn: str, tmp_path: Path) -> None:
    shutil.copytree(migrate.MIGRATIONS_DIR, tmp_path / "m")
    (tmp_path / "m" / "0099_broken.sql").write_text(
        "CREATE TABLE audit.half_done (id int);\nSELECT no_such_column FROM audit.events;\n")
    with PgStore(dsn) as store:
        with pytest.raises(migrate.MigrationFailed, match="0099_broken.sql"):
            store.migrate(migrate.load(tmp_path / "m"))
        assert store.count() == 0  # the connection is usable, the others stayed applied
    assert query(dsn, "SELECT version FROM audit.schema_migrations ORDER BY 1") == [(v,) for v in ALL]
    assert query(dsn, "SELECT to_regclass('audit.half_done') IS NULL") == [(True,)]


def test_misnamed_migration_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_first.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationFileError, match="1_first.sql"):
        migrate.load(tmp_path)


# -- writes -----------------------------------------------------------------------------

def test_values_round_trip(store: PgStore, dsn: str) -> None:
    rec = record(7, trace_id=None, labels=None, extra={"note": "é ☃", "n": [1, 2.5]})
    assert store.write("edge-a.0", [rec], (3, 512)) == 1
    (got,) = query(dsn, "SELECT request_id, extract(epoch FROM ts), host, stream, model, "
                        "version, face, input_digest, input_meta, outputs, labels, cached, "
                        "latency_ms, inputs, api_key_id, trace_id, extra FROM audit.predictions")
    row = rec.to_row()
    assert got[0] == rec.request_id and abs(float(got[1]) - rec.ts) < 1e-6
    assert got[2:4] == (rec.host, "edge-a.0")
    assert bytes(got[13]) == rec.inputs
    assert got[4:13] + got[14:] == (
        row["model"], row["version"], row["face"], row["input_digest"], row["input_meta"],
        row["outputs"], None, rec.cached, rec.latency_ms, rec.api_key_id, None, row["extra"])


def test_same_batch_twice_lands_once_and_position_advances(store: PgStore) -> None:
    records = batch(50)
    assert store.position("edge-a.0") is None
    assert store.write("edge-a.0", records, (1, 4096)) == 50
    assert store.write("edge-a.0", records + records[:5], (1, 8192)) == 0
    assert store.write("edge-a.0", batch(10, start=45), (2, 0)) == 5
    assert store.count() == 55  # distinct request ids
    assert store.position("edge-a.0") == (2, 0)
    assert store.position("edge-b.0") is None


def test_empty_batch_still_moves_the_position(store: PgStore) -> None:
    assert store.write("edge-a.0", [], (4, 100)) == 0
    assert store.position("edge-a.0") == (4, 100)


def test_batch_spanning_two_days_lands_in_two_partitions(store: PgStore, dsn: str) -> None:
    times = [DAY2 - 3600, DAY2 - 1e-6, DAY2, DAY2 + 1e-6, DAY2 + 3600]  # UTC midnight
    records = [replace(record(n), ts=t) for n, t in enumerate(times)]
    assert store.write("edge-a.0", records, (1, 1)) == 5
    assert rows_by_partition(dsn) == {"predictions_20250314": 2, "predictions_20250315": 3}
    children = {r[0] for r in query(
        dsn, "SELECT inhrelid::regclass::text FROM pg_inherits "
             "WHERE inhparent = 'audit.predictions'::regclass")}
    assert {"audit.predictions_20250314", "audit.predictions_20250315"} <= children


def test_a_detached_day_kept_as_a_table_gets_a_new_partition(store: PgStore, dsn: str) -> None:
    """An operator archived a day (DETACH, table kept); a late record of it still lands."""
    assert store.write("edge-a.0", [record(0)], (1, 1)) == 1
    query(dsn, "ALTER TABLE audit.predictions DETACH PARTITION audit.predictions_20250314")
    assert store.write("edge-a.0", [record(1)], (1, 2)) == 1
    assert rows_by_partition(dsn) == {"predictions_20250314_2": 1}
    assert query(dsn, "SELECT count(*) FROM audit.predictions_20250314") == [(1,)]  # untouched
    assert store.write("edge-a.0", [record(2)], (1, 3)) == 1  # the day is found now
    assert rows_by_partition(dsn) == {"predictions_20250314_2": 2}


def test_a_day_covered_by_a_partition_of_another_name_lands_there(store: PgStore,
                                                                  dsn: str) -> None:
    query(dsn, "CREATE TABLE audit.restored_archive (LIKE audit.predictions INCLUDING DEFAULTS)")
    query(dsn, "ALTER TABLE audit.predictions ATTACH PARTITION audit.restored_archive "
               "FOR VALUES FROM (to_timestamp(%s)) TO (to_timestamp(%s))", (DAY1, DAY2))
    assert store.write("edge-a.0", [record(0)], (1, 1)) == 1
    assert rows_by_partition(dsn) == {"restored_archive": 1}
    assert query(dsn, "SELECT relname FROM pg_class WHERE relname LIKE 'predictions_20250314%%'"
                 ) == []  # no stray table for the day


def test_a_catch_all_archive_from_minvalue_covers_its_days(store: PgStore, dsn: str) -> None:
    query(dsn, "CREATE TABLE audit.old (LIKE audit.predictions INCLUDING DEFAULTS)")
    query(dsn, "ALTER TABLE audit.predictions ATTACH PARTITION audit.old "
               "FOR VALUES FROM (MINVALUE) TO (to_timestamp(%s))", (DAY2,))
    assert store.write("edge-a.0", [record(0)], (1, 1)) == 1
    assert rows_by_partition(dsn) == {"old": 1}


def test_a_partition_made_by_hand_in_any_session_settings_holds_its_utc_day(dsn: str) -> None:
    """ensure_partition called from psql with another DateStyle and TimeZone (0002 says
    to call it by hand) still attaches exactly the UTC day."""
    with PgStore(dsn) as store:
        store.migrate()
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET DateStyle = 'German'; SET TimeZone = 'Asia/Kolkata'")
            cur.execute("SELECT audit.ensure_partition('2025-05-01')")
            cur.execute("SELECT audit.ensure_partition('2025-05-01')")  # found again
            assert cur.fetchone() == ("predictions_20250501",)
            cur.execute("SET DateStyle = 'ISO'; SET TimeZone = 'UTC'")
            cur.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class "
                        "WHERE relname = 'predictions_20250501'")
            assert cur.fetchone() == ("FOR VALUES FROM ('2025-05-01 00:00:00+00') "
                                      "TO ('2025-05-02 00:00:00+00')",)
        conn.commit()
    finally:
        conn.close()


def test_a_day_only_partly_covered_by_hand_fails_with_what_to_do(store: PgStore,
                                                                  dsn: str) -> None:
    query(dsn, "CREATE TABLE audit.half_day (LIKE audit.predictions INCLUDING DEFAULTS)")
    query(dsn, "ALTER TABLE audit.predictions ATTACH PARTITION audit.half_day "
               "FOR VALUES FROM (to_timestamp(%s)) TO (to_timestamp(%s))", (DAY1, DAY1 + 43_200))
    with pytest.raises(StoreRejected, match="only partly covered by partition.s. half_day"):
        store.write("edge-a.0", [record(0, ts=DAY1 + 50_000)], (1, 1))
    assert store.count() == 0


def test_a_partition_pending_detach_fails_with_what_to_do(store: PgStore, dsn: str) -> None:
    """An interrupted DETACH ... CONCURRENTLY leaves the day's partition pending."""
    assert store.write("edge-a.0", [record(0)], (1, 1)) == 1
    reader = psycopg2.connect(dsn)
    with reader.cursor() as cur:  # an open transaction the concurrent detach must wait for
        cur.execute("SELECT count(*) FROM audit.predictions")
    detacher = psycopg2.connect(dsn)
    detacher.autocommit = True
    with detacher.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    errors: list[BaseException] = []

    def detach() -> None:
        try:
            with detacher.cursor() as cur:
                cur.execute("ALTER TABLE audit.predictions DETACH PARTITION "
                            "audit.predictions_20250314 CONCURRENTLY")
        except psycopg2.Error as exc:
            errors.append(exc)

    thread = threading.Thread(target=detach)
    thread.start()
    deadline = time.monotonic() + 10
    while not query(dsn, "SELECT 1 FROM pg_inherits WHERE inhdetachpending"):
        assert time.monotonic() < deadline, "the detach never reached its second phase"
        time.sleep(0.05)
    query(dsn, "SELECT pg_cancel_backend(%s)", (pid,))
    thread.join(10)
    reader.rollback()
    reader.close()
    detacher.close()
    assert errors  # cancelled: the partition stays pending detach
    with pytest.raises(StoreRejected, match="pending detach: predictions_20250314.*FINALIZE"):
        store.write("edge-a.0", [record(1)], (1, 2))


def test_shippers_racing_into_a_new_day_all_land(store: PgStore, dsn: str) -> None:
    gate = threading.Barrier(4)
    results: list[Any] = []

    def ship(k: int) -> None:
        with PgStore(dsn) as mine:
            gate.wait()
            try:
                results.append(mine.write(f"edge-{k}.0", batch(100, start=k * 1000, ts=DAY2), (1, 1)))
            except Exception as exc:  # reported below
                results.append(exc)

    threads = [threading.Thread(target=ship, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [100] * 4
    assert rows_by_partition(dsn) == {"predictions_20250315": 400}


def test_migration_2_moves_rows_out_of_default_and_drops_it(dsn: str) -> None:
    first = migrate.load()[0]
    with PgStore(dsn) as store:
        assert store.migrate([first]) == [1]
        query(dsn, "INSERT INTO audit.predictions (request_id, ts, host, stream, model, "
                   "version, face, input_digest, input_meta, outputs, cached, latency_ms) "
                   "VALUES ('manual', to_timestamp(%s), 'h', 's', 'm', '1', 'v1', 'd', '[]', "
                   "'{}', false, 1)", (DAY1 + 60,))
        assert rows_by_partition(dsn) == {"predictions_default": 1}
        assert store.migrate() == ALL[1:]
        assert rows_by_partition(dsn) == {"predictions_20250314": 1}
        assert store.write("edge-a.0", batch(2), (1, 1)) == 2
    assert rows_by_partition(dsn) == {"predictions_20250314": 3}


def test_a_migration_blocked_by_a_reader_gives_up_and_applies_later(dsn: str) -> None:
    """0002 drops the DEFAULT partition (ACCESS EXCLUSIVE): behind an idle reader
    it gives up after migrate.LOCK_TIMEOUT_MS instead of queueing (a queued
    exclusive lock would stall every new reader), and applies once the reader
    is gone."""
    first = migrate.load()[0]
    with PgStore(dsn) as store:
        store.migrate([first])
        reader = psycopg2.connect(dsn)
        try:
            with reader.cursor() as cur:  # a transaction stays open after this
                cur.execute("SELECT count(*) FROM audit.predictions")
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="lock timeout"):
                store.migrate()
            assert time.monotonic() - started < migrate.LOCK_TIMEOUT_MS / 1000 + 5
        finally:
            reader.rollback()
            reader.close()
        assert store.migrate() == ALL[1:]


def test_an_open_reader_does_not_stall_the_first_batch_of_a_day(store: PgStore,
                                                                 dsn: str) -> None:
    """An idle transaction that read the table (psql left open, a report) must
    not block the partition a new day needs (it did while DEFAULT existed)."""
    assert store.write("edge-a.0", batch(2), (1, 1)) == 2
    reader = psycopg2.connect(dsn)
    try:
        with reader.cursor() as cur:  # a transaction stays open after this
            cur.execute("SELECT count(*) FROM audit.predictions")
        results: list[Any] = []
        later = batch(3, start=100, ts=DAY2 + 86400 * 3 + 60)  # a day with no partition
        writer = threading.Thread(target=lambda: results.append(
            store.write("edge-a.0", later, (1, 2))))
        writer.start()
        writer.join(10)
        assert results == [3], "the new day's partition waited for the idle reader"
    finally:
        reader.rollback()
        reader.close()


def admin_event(n: int, **fields: Any) -> AuditRecord:
    return replace(record(n), face="admin", version="", outputs={}, input_meta=[],
                   input_digest="", api_key_id="k1",
                   extra={"event": "split", "old": {"1": 100}, "new": {"1": 80, "2": 20}},
                   **fields)


def test_management_events_land_in_events_once(store: PgStore, dsn: str) -> None:
    mixed = [record(0), admin_event(1), record(2)]
    assert store.write("edge-a.0", mixed, (1, 1)) == 3
    assert store.write("edge-a.0", mixed, (1, 1)) == 0  # re-shipped: nothing new
    assert query(dsn, "SELECT request_id FROM audit.predictions ORDER BY 1") == [
        (mixed[0].request_id,), (mixed[2].request_id,)]
    [(kind, actor, detail, rid, host, stream, model, ts)] = query(
        dsn, "SELECT kind, actor, detail, request_id, host, stream, model, "
             "extract(epoch FROM ts)::float8 FROM audit.events")
    assert (kind, actor, rid, host, stream, model) == (
        "split", "k1", mixed[1].request_id, mixed[1].host, "edge-a.0", mixed[1].model)
    assert detail == {"old": {"1": 100}, "new": {"1": 80, "2": 20}}
    assert abs(ts - mixed[1].ts) < 1e-6


def test_the_request_key_tells_two_requests_with_one_client_id_apart(store: PgStore,
                                                                      dsn: str) -> None:
    """Same client id, same accept time (HAProxy's clock ticks coarsely): two
    requests, two rows. The same request logged by two edges: one row."""
    first = replace(record(0), request_id="client-7", request_key="front-a")
    other = replace(first, request_key="front-b", host="edge-b")
    retried = replace(first, host="edge-b")  # another edge answered the re-sent request
    assert store.write("edge-a.0", [first], (1, 1)) == 1
    assert store.write("edge-b.0", [other, retried], (1, 1)) == 1
    assert query(dsn, "SELECT request_key, host FROM audit.predictions ORDER BY 1") == [
        ("front-a", "edge-a"), ("front-b", "edge-b")]
    events = [replace(admin_event(5), request_key=k) for k in ("k1", "k2", "k1")]
    assert store.write("edge-a.0", events, (1, 2)) == 2
    assert query(dsn, "SELECT count(*) FROM audit.events") == [(2,)]


def test_migration_3_moves_admin_rows_to_events(dsn: str) -> None:
    first, second, *_ = migrate.load()
    with PgStore(dsn) as store:
        store.migrate([first, second])
        # where earlier shippers put an event: among the predictions
        query(dsn, "SELECT audit.ensure_partition((to_timestamp(%s) AT TIME ZONE 'UTC')::date)",
              (DAY1 + 60,))
        query(dsn, "INSERT INTO audit.predictions (request_id, ts, host, stream, model, "
                   "version, face, input_digest, input_meta, outputs, cached, latency_ms, "
                   "api_key_id, extra) VALUES ('ev-1', to_timestamp(%s), 'h', 's', 'm', '', "
                   "'admin', '', '[]', '{}', false, 1, 'k1', "
                   "'{\"event\": \"split\", \"old\": {\"1\": 100}, "
                   "\"new\": {\"1\": 80, \"2\": 20}}')", (DAY1 + 60,))
        assert store.migrate() == ALL[2:]
    assert query(dsn, "SELECT count(*) FROM audit.predictions WHERE face = 'admin'") == [(0,)]
    assert query(dsn, "SELECT count(*) FROM audit.predictions") == [(0,)]
    assert query(dsn, "SELECT kind, actor, detail FROM audit.events") == [
        ("split", "k1", {"old": {"1": 100}, "new": {"1": 80, "2": 20}})]


def test_nonfinite_outputs_are_stored_as_null(store: PgStore, dsn: str) -> None:
    outputs = {"probabilities": {"dtype": "float32", "shape": [1, 2],
                                 "data": [[float("nan"), float("inf")]]}}
    assert store.write("edge-a.0", [record(1, outputs=outputs)], (1, 1)) == 1
    assert query(dsn, "SELECT outputs #> '{probabilities,data,0}' FROM audit.predictions") == [
        ([None, None],)]


@pytest.mark.parametrize("fields", [{"extra": {"x": float("nan")}},
                                    {"labels": [float("-inf")]},
                                    {"input_meta": [{"scale": float("nan")}]}])
def test_nonfinite_json_elsewhere_is_refused(store: PgStore, fields: dict[str, Any]) -> None:
    (column,) = fields
    with pytest.raises(StoreRejected, match=f"req-000001.*{column}.*non-finite"):
        store.write("edge-a.0", [record(0), record(1, **fields)], (1, 1))
    assert store.count() == 0 and store.position("edge-a.0") is None


def test_row_the_database_refuses_is_rejected_and_the_store_goes_on(store: PgStore) -> None:
    with pytest.raises(StoreRejected):
        store.write("edge-a.0", [record(1, host="nul\x00byte")], (1, 1))
    assert store.count() == 0 and store.position("edge-a.0") is None
    assert store.write("edge-a.0", batch(3), (1, 2)) == 3


@pytest.mark.parametrize("how", ["terminate", "close"])
def test_crash_before_commit_leaves_neither_rows_nor_position(dsn: str, how: str) -> None:
    seen: list[int] = []

    class DiesAtCommit(psycopg2.extensions.connection):  # type: ignore[misc]
        def commit(self) -> None:
            with self.cursor() as cur:  # the transaction's own view, just before COMMIT
                cur.execute("SELECT count(*) FROM audit.predictions")
                seen.append(cur.fetchone()[0])
            if how == "terminate":
                query(dsn, "SELECT pg_terminate_backend(%s, 10000)", (self.get_backend_pid(),))
            else:
                self.close()
            super().commit()

    with PgStore(dsn) as store:
        store.migrate()
    with PgStore(dsn, connect=lambda d: psycopg2.connect(d, connection_factory=DiesAtCommit)) as s:
        with pytest.raises(StoreUnavailable):
            s.write("edge-a.0", batch(20), (1, 1))
    assert seen == [20]
    with PgStore(dsn) as store:
        assert store.count() == 0 and store.position("edge-a.0") is None
        assert store.write("edge-a.0", batch(20), (1, 1)) == 20


def test_postgres_down_is_unavailable_and_writes_resume_after_restart() -> None:
    with running_cluster() as pg:
        pg.create_database("falcon")
        with PgStore(pg.dsn()) as store:
            store.migrate()
            assert store.write("edge-a.0", batch(10), (1, 10)) == 10
            pg.stop()
            with pytest.raises(StoreUnavailable):
                store.write("edge-a.0", batch(10, start=10), (1, 20))
            with pytest.raises(StoreUnavailable):
                store.position("edge-a.0")
            pg.start()
            assert store.write("edge-a.0", batch(10, start=10), (1, 20)) == 10
            assert store.position("edge-a.0") == (1, 20) and store.count() == 20


def test_indexes_serve_the_auditors_queries(store: PgStore, dsn: str) -> None:
    store.write("edge-a.0", batch(200), (1, 1))
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET enable_seqscan = off")
            plans = {}
            for name, where in [("request_id", "request_id = 'req-000042'"),
                                ("model", "model = 'digits' AND version = '1' AND ts < now()")]:
                cur.execute(f"EXPLAIN SELECT * FROM audit.predictions WHERE {where}")
                plans[name] = "\n".join(r[0] for r in cur.fetchall())
    finally:
        conn.close()
    assert "Index" in plans["request_id"] and "pkey" in plans["request_id"], plans
    assert "model_version_ts" in plans["model"], plans
    defs = [r[0] for r in query(dsn, "SELECT indexdef FROM pg_indexes WHERE schemaname = "
                                     "'audit' AND tablename = 'predictions'")]
    assert any("USING brin (ts)" in d for d in defs), defs


# -- the embedded cluster ----------------------------------------------------------------

def test_start_failure_reports_the_log_tail(pg_cluster: EmbeddedPostgres) -> None:
    root = make_root()
    try:
        pg = EmbeddedPostgres(root / "data", pg_cluster.port)  # port already taken
        assert pg.init() is True and pg.init() is False
        with pytest.raises(PgStartError, match="(?s)server.log.*already in use"):
            pg.start(timeout=20)
        assert not pg.running()
        pg.port = free_port()
        pg.start()
        assert pg.running() and pg.create_database("x") and not pg.create_database("x")
        pg.stop()
        assert not pg.running()
    finally:
        EmbeddedPostgres(root / "data", 0).stop()
        shutil.rmtree(root)
