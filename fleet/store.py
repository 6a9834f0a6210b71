"""The fleet state in PostgreSQL: the desired state of every managed model,
its revision history, and what each host reports running.

    store = FleetStore(dsn)
    store.migrate()                                   # audit/migrations, 0007 makes fleet.*
    store.ensure_schema()                             # check; migrate only when behind
    change = store.change("load", "digits", actor, version="2")
    change = store.change("split", "digits", actor, split={"1": 90, "2": 10},
                          if_revision=change.revision)  # StaleRevision if someone wrote first
    store.change("rollback", "digits", actor)         # the split before the last split write
    store.desired()                                   # Desired(revision, {model: ModelState})
    store.report("host-a", seen, converged, actual, error, interval_s, steps)
    store.hosts()                                     # [HostRow] with heartbeat ages

Writes serialize on ``fleet.head`` (``SELECT ... FOR UPDATE``): each one reads
the head revision, checks the optional precondition, computes the model's new
state (:mod:`fleet.state`), and commits in one transaction the revision row
(who, when, op, old -> new), the new desired row, the new head, its
``audit.events`` row and ``NOTIFY fleet_changed``. A change that changes nothing
(a split already set, a rollback already done) writes nothing and returns None,
so a retried command is harmless.

A host's report and the ``audit.events`` row of what changed on it commit
together too: the event names what differs from the host's previous report
(managed models only), so each change a host applies is recorded once, even if
its reconciler crashed between applying and reporting.

Errors: :class:`~fleet.errors.FleetUnavailable` (connection lost, or a query
past the statement timeout: reconnects on the next call),
:class:`~fleet.errors.DatabaseError` (any other psycopg2 error: a privilege, a
read-only standby; reconnects too), :class:`~fleet.errors.SchemaNotCurrent`,
:class:`~fleet.errors.StaleRevision`,
:class:`~fleet.errors.InvalidChange` and subclasses; every method leaves the
connection outside a transaction. Not thread-safe: one store per thread.
"""

from __future__ import annotations

import json
import select
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg2

from fleet import state as st
from fleet.errors import (
    CarriesTraffic,
    DatabaseError,
    FleetError,
    FleetUnavailable,
    InvalidChange,
    SchemaNotCurrent,
    StaleRevision,
)
from fleet.plan import Actual
from fleet.state import ModelState

CHANNEL = "fleet_changed"
OPS = ("load", "unload", "split", "rollback")

INSERT_EVENT = """
INSERT INTO audit.events (ts, kind, actor, detail, request_id, host, stream, model, request_key)
VALUES (now(), %s, %s, %s, %s, %s, 'fleet', %s, %s)
"""


STATEMENT_TIMEOUT_S = 30.0  # a query on a hung server fails (the reconciler's watchdog)


def connect(dsn: str, statement_timeout_s: float = STATEMENT_TIMEOUT_S) -> Any:
    """A connection that notices a dead server: TCP keepalives (about 25 s to
    give up on a silent peer), a statement timeout (0: none), a connect timeout."""
    return psycopg2.connect(dsn, connect_timeout=5, application_name="falcon-fleet",
                            keepalives=1, keepalives_idle=10, keepalives_interval=5,
                            keepalives_count=3,
                            options=f"-c statement_timeout={int(statement_timeout_s * 1000)}")


def database_error(exc: psycopg2.Error) -> FleetError:
    """The fleet's error for a psycopg2 one: a lost or broken connection (or a
    statement timeout) is FleetUnavailable, any other DatabaseError naming
    PostgreSQL's message and SQLSTATE."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return FleetUnavailable(f"PostgreSQL unreachable: {text}")
    code = getattr(exc, "pgcode", None) or ""
    return DatabaseError(f"PostgreSQL refused: {text}" + (f" (SQLSTATE {code})" if code else ""),
                         code)


def close_quietly(conn: Any) -> None:
    if conn is not None:
        try:
            conn.close()
        except psycopg2.Error:
            pass


@dataclass(frozen=True)
class Desired:
    revision: int
    models: dict[str, ModelState]


@dataclass(frozen=True)
class Change:
    """One revision. For a model joining the fleet ``old`` is what the hosts
    reported running (None when none did)."""

    revision: int
    at: float
    actor: str
    op: str
    model: str
    old: dict[str, Any] | None
    new: dict[str, Any]
    target: int | None = None  # a rollback: the revision whose split it restored
    joins: bool = False        # the model's first revision


@dataclass(frozen=True)
class HostRow:
    host: str
    seen: int        # the desired revision its last pass read
    converged: int   # the last desired revision it ran exactly
    actual: dict[str, Actual]
    error: str
    interval_s: float
    age_s: float     # seconds since its heartbeat

    @property
    def stale(self) -> bool:
        """No heartbeat for three passes (and a few seconds of slack)."""
        return self.age_s > 3 * self.interval_s + 5


class FleetStore:
    """See the module docstring."""

    def __init__(self, dsn: str, *, connect: Callable[[str], Any] = connect) -> None:
        self._dsn = dsn
        self._connect = connect
        self._conn: Any = None
        self._checked = False  # the schema is current (migrated or checked)

    # -- plumbing ---------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """A cursor in a transaction, committed on success; a lost connection
        becomes FleetUnavailable, any other error rolls back."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect(self._dsn)
            conn = self._conn
            try:
                with conn.cursor() as cur:
                    yield cur
                conn.commit()
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise
        except psycopg2.Error as exc:
            self.close()  # reconnect next time (after a failover: maybe to the new primary)
            raise database_error(exc) from None

    def close(self) -> None:
        close_quietly(self._conn)
        self._conn = None

    def migrate(self) -> list[int]:
        """Apply the pending migrations (audit/migrate.py): the write commands do,
        with a role that may create the schema (CREATE on the database)."""
        from audit.migrate import migrate

        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect(self._dsn)
            with self._conn.cursor() as cur:  # a migration may outlast a query's timeout
                cur.execute("SET statement_timeout = 0")
            self._conn.commit()
            done = migrate(self._conn)
            self._checked = True
            return done
        except psycopg2.Error as exc:
            self.close()
            raise database_error(exc) from None

    def check_schema(self) -> None:
        """SchemaNotCurrent unless every migration this code knows is applied
        (ChecksumMismatch if one differs), with reads only: ``migrate()`` runs
        ``CREATE SCHEMA IF NOT EXISTS``, which needs CREATE on the database even
        when the schema exists, a grant a least-privilege role lacks."""
        from audit.migrate import load, verify

        known = load()
        with self._tx() as cur:
            cur.execute("SELECT to_regclass('audit.schema_migrations') IS NOT NULL")
            applied: dict[int, tuple[str, str]] = {}
            if cur.fetchone()[0]:
                cur.execute("SELECT version, name, checksum FROM audit.schema_migrations")
                applied = {int(v): (n, c) for v, n, c in cur.fetchall()}
        verify(applied, known)
        missing = [m.filename for m in known if m.version not in applied]
        if missing:
            raise SchemaNotCurrent(
                f"the fleet database lacks migration(s) {', '.join(missing)}: run any "
                "`falconctl hosts` command (or the shipper) once with a role that may create "
                "the schema")
        self._checked = True

    def ensure_schema(self) -> None:
        """Check the schema is current; only when it is not, migrate (a fresh
        database, a new release): a role without CREATE works once the schema
        is current, and gets SchemaNotCurrent naming what is missing when not."""
        try:
            self.check_schema()
        except SchemaNotCurrent as behind:
            try:
                self.migrate()
            except DatabaseError as exc:
                raise SchemaNotCurrent(f"{behind}; migrating it here failed: {exc}") from None

    # -- reads ------------------------------------------------------------------
    def desired(self) -> Desired:
        if not self._checked:  # a reconciler started while PostgreSQL was down
            self.ensure_schema()
        with self._tx() as cur:
            cur.execute("SELECT revision FROM fleet.head")
            revision = int(cur.fetchone()[0])
            cur.execute("SELECT model, versions, split, origin FROM fleet.desired")
            models = {m: ModelState.from_row(v, s, o) for m, v, s, o in cur.fetchall()}
        return Desired(revision, models)

    def history(self, model: str | None = None, limit: int = 50) -> list[Change]:
        with self._tx() as cur:
            cur.execute("SELECT revision, extract(epoch FROM at)::float8, actor, op, model, old, "
                        "new FROM fleet.revisions WHERE %s::text IS NULL OR model = %s "
                        "ORDER BY revision DESC LIMIT %s", (model, model, limit))
            return [Change(*row) for row in reversed(cur.fetchall())]

    def hosts(self) -> list[HostRow]:
        with self._tx() as cur:
            cur.execute("SELECT host, seen, converged, actual, error, interval_s, "
                        "extract(epoch FROM now() - heartbeat)::float8 FROM fleet.hosts "
                        "ORDER BY host")
            return [HostRow(h, int(seen), int(conv),
                            {m: Actual.from_json(a) for m, a in actual.items()},
                            error, float(iv), float(age))
                    for h, seen, conv, actual, error, iv, age in cur.fetchall()]

    # -- writes -----------------------------------------------------------------
    def change(self, op: str, model: str, actor: str, *, version: str | None = None,
               split: dict[str, int] | None = None, to_revision: int | None = None,
               if_revision: int | None = None) -> Change | None:
        """Apply one operator change; the new revision, or None when the state
        already is what was asked. Raises StaleRevision when ``if_revision`` is
        not the head, InvalidChange (and subclasses) naming the field."""
        if op not in OPS:
            raise InvalidChange(f"op {op!r}: expected one of {', '.join(OPS)}", "op")
        st.check_model(model)
        with self._tx() as cur:
            cur.execute("SELECT revision FROM fleet.head FOR UPDATE")
            head = int(cur.fetchone()[0])
            if if_revision is not None and head != if_revision:
                raise StaleRevision(f"the fleet state is at revision {head}, not {if_revision}: "
                                    "someone changed it since; read it again "
                                    "(`falconctl hosts status`)")
            revision = head + 1
            current = self._current(cur, model)
            joins = current is None and op != "rollback"
            if joins:  # a model new to the fleet starts as the hosts report running it
                current = self._seed(cur, model, revision, explicit_split=op == "split")
            new, target = self._apply(cur, op, model, current, revision, version, split,
                                      to_revision)
            if not joins and current is not None and (new.versions, new.split) == (
                    current.versions, current.split):
                return None
            return self._write(cur, revision, actor, op, model, current, new, target, joins)

    def _current(self, cur: Any, model: str) -> ModelState | None:
        cur.execute("SELECT versions, split, origin FROM fleet.desired WHERE model = %s",
                    (model,))
        row = cur.fetchone()
        return None if row is None else ModelState.from_row(*row)

    def _apply(self, cur: Any, op: str, model: str, current: ModelState | None, revision: int,
               version: str | None, split: dict[str, int] | None,
               to_revision: int | None) -> tuple[ModelState, int | None]:
        if op == "load":
            return st.with_version(current, st.check_version(version), revision), None
        if current is None and op == "rollback":
            from fleet.errors import NothingToRollBack

            raise NothingToRollBack(f"model {model!r} is not in the fleet's desired state "
                                    "(nothing to roll back)")
        if current is None:
            raise InvalidChange(f"model {model!r} is not in the fleet's desired state and no "
                                "host reports running it: `falconctl hosts load MODEL VERSION` "
                                "first", "model")
        if op == "unload":
            version = st.check_version(version)
            if version not in current.versions:
                return current, None  # not desired already
            new = st.without_version(current, version, revision)  # its desired weight
            self._check_unrouted(cur, model, version)             # what hosts still run
            return new, None
        if op == "split":
            return st.with_split(current, split, revision), None
        cur.execute("SELECT revision, new, origin FROM fleet.revisions WHERE model = %s "
                    "ORDER BY revision", (model,))
        history = [(int(r), ModelState.from_row(n["versions"], n["split"], o))
                   for r, n, o in cur.fetchall()]
        target, restored = st.rollback_target(history, current, to_revision)
        return restored, target

    def _check_unrouted(self, cur: Any, model: str, version: str) -> None:
        """CarriesTraffic if a live host (heartbeat within three intervals) still
        routes to ``version``: its split gives it weight, or it runs no split and
        ``version`` is its highest (the daemon's default)."""
        cur.execute("SELECT host, actual -> %s FROM fleet.hosts WHERE actual ? %s AND "
                    "now() - heartbeat <= (3 * interval_s + 5) * interval '1 second' "
                    "ORDER BY host", (model, model))
        for host, doc in cur.fetchall():
            actual = Actual.from_json(doc)
            default = not actual.split and actual.versions and actual.versions[-1] == version
            if actual.split.get(version, 0) > 0 or default:
                raise CarriesTraffic(f"version {version} still carries traffic on {host} "
                                     f"(its split {actual.split or 'none: the highest answers'}"
                                     "): wait until the hosts converge (`falconctl hosts "
                                     "status`), then unload")

    def _seed(self, cur: Any, model: str, revision: int, explicit_split: bool) -> ModelState | None:
        """A model new to the fleet starts as the hosts report running it
        (SplitDisagreement when they route it differently, unless a split is given)."""
        cur.execute("SELECT host, actual -> %s FROM fleet.hosts WHERE actual ? %s ORDER BY host",
                    (model, model))
        reports = [(host, Actual.from_json(doc)) for host, doc in cur.fetchall()]
        return st.seeded([a.versions for _, a in reports], [a.split for _, a in reports],
                         revision, [h for h, _ in reports], explicit_split)

    def _write(self, cur: Any, revision: int, actor: str, op: str, model: str,
               old: ModelState | None, new: ModelState, target: int | None,
               joins: bool) -> Change:
        """``old``: the model's desired state, or what the hosts ran when it ``joins``
        the fleet (None when no host ran it)."""
        old_doc = None if old is None else old.to_json()
        cur.execute("INSERT INTO fleet.revisions (revision, actor, op, model, old, new, origin) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING extract(epoch FROM at)",
                    (revision, actor, op, model, _json(old_doc), _json(new.to_json()),
                     new.origin))
        at = float(cur.fetchone()[0])
        cur.execute("INSERT INTO fleet.desired (model, versions, split, origin, revision) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (model) DO UPDATE SET "
                    "versions = EXCLUDED.versions, split = EXCLUDED.split, "
                    "origin = EXCLUDED.origin, revision = EXCLUDED.revision",
                    (model, list(new.versions), _json(new.split), new.origin, revision))
        cur.execute("UPDATE fleet.head SET revision = %s", (revision,))
        detail = {"revision": revision, "old": old_doc, "new": new.to_json()}
        if target is not None:
            detail["restored_revision"] = target
        if joins:
            detail["joins_fleet"] = True  # old: what the hosts reported running
        cur.execute("SELECT current_user")
        detail["db_user"] = cur.fetchone()[0]
        cur.execute(INSERT_EVENT, (f"fleet.{op}", actor, _json(detail), f"fleet-r{revision}",
                                   "fleet", model, ""))
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(revision)))
        return Change(revision, at, actor, op, model, old_doc, new.to_json(), target, joins)

    def report(self, host: str, seen: int, converged: bool, actual: dict[str, Actual] | None,
               error: str, interval_s: float, steps: list[Any], managed: set[str],
               initial: dict[str, Actual] | None = None) -> dict[str, Any] | None:
        """Record ``host``'s pass: what it runs (None: unknown, the daemon did
        not answer; the previous report's stays), whether it matches revision
        ``seen``, its error, a heartbeat. Returns the audit event's detail when
        a managed model runs differently from the previous report, or, for a
        host with none yet, from ``initial`` (what it ran before its first
        steps); then that event is in audit.events, committed with this report."""
        if actual is None:
            with self._tx() as cur:
                cur.execute(
                    "INSERT INTO fleet.hosts AS h (host, seen, error, interval_s) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (host) DO UPDATE SET seen = "
                    "EXCLUDED.seen, error = EXCLUDED.error, interval_s = EXCLUDED.interval_s, "
                    "heartbeat = now()", (host, seen, error, interval_s))
            return None
        now = {m: a.to_json() for m, a in actual.items()}
        with self._tx() as cur:
            cur.execute("SELECT actual FROM fleet.hosts WHERE host = %s FOR UPDATE", (host,))
            row = cur.fetchone()
            before = row[0] if row is not None and row[0] else None
            if before is None and initial is not None:
                before = {m: a.to_json() for m, a in initial.items()}
            changed = {} if before is None else {
                m: (before.get(m), now.get(m)) for m in sorted(managed)
                if before.get(m) != now.get(m) and now.get(m) is not None}
            cur.execute(
                "INSERT INTO fleet.hosts AS h (host, seen, converged, actual, error, interval_s, "
                "heartbeat) VALUES (%s, %s, %s, %s, %s, %s, now()) ON CONFLICT (host) DO UPDATE "
                "SET seen = EXCLUDED.seen, converged = CASE WHEN %s THEN EXCLUDED.seen "
                "ELSE h.converged END, actual = EXCLUDED.actual, error = EXCLUDED.error, "
                "interval_s = EXCLUDED.interval_s, heartbeat = now()",
                (host, seen, seen if converged else 0, _json(now), error, interval_s, converged))
            if not changed:
                return None
            detail = {"revision": seen, "converged": converged, "steps": steps,
                      "old": {m: o for m, (o, _) in changed.items()},
                      "new": {m: n for m, (_, n) in changed.items()}}
            cur.execute(INSERT_EVENT, ("fleet.applied", f"reconciler@{host}", _json(detail),
                                       f"fleet-r{seen}-{host}", host, ",".join(changed),
                                       uuid.uuid4().hex))
            return detail

    def forget(self, host: str) -> bool:
        """Remove a host's report (a host taken out of the fleet for good)."""
        with self._tx() as cur:
            cur.execute("DELETE FROM fleet.hosts WHERE host = %s", (host,))
            return bool(cur.rowcount)


def _json(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True)


class Listener:
    """``LISTEN fleet_changed`` on a connection of its own.

    ``wait(timeout)`` returns True when a change was notified (or the
    connection was just made: the caller must read the state anyway), False
    on timeout; raises FleetUnavailable when the connection is lost (the next
    call reconnects), DatabaseError when PostgreSQL refuses the LISTEN."""

    def __init__(self, dsn: str, *, connect: Callable[[str], Any] = connect) -> None:
        self._dsn = dsn
        self._connect = connect
        self._conn: Any = None

    def wait(self, timeout: float) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect(self._dsn)
                self._conn.autocommit = True
                with self._conn.cursor() as cur:
                    cur.execute(f"LISTEN {CHANNEL}")
                return True
            conn = self._conn
            if not conn.notifies:
                select.select([conn], [], [], max(0.0, timeout))
                conn.poll()
            woke = bool(conn.notifies)
            conn.notifies.clear()
            return woke
        except OSError as exc:
            self.close()
            raise FleetUnavailable(f"PostgreSQL unreachable: {str(exc).strip()}") from None
        except psycopg2.Error as exc:
            self.close()
            raise database_error(exc) from None

    def close(self) -> None:
        close_quietly(self._conn)
        self._conn = None
