"""Versioned schema migrations, run by the project itself (no external tool).

Files: ``audit/migrations/NNNN_name.sql`` — a 4-digit version, applied in
increasing order, each in its own transaction (so no ``BEGIN``/``COMMIT`` and no
``CREATE INDEX CONCURRENTLY`` inside one). Released files never change:
``audit.schema_migrations`` keeps each applied file's sha256 and
:func:`migrate` refuses to run when a file's checksum (or name) no longer
matches what was applied.

Concurrency: several shippers on several hosts may start at once. Every
migration transaction first takes ``pg_advisory_xact_lock(LOCK_KEY)`` and only
then reads which versions are applied, so each version runs exactly once and
the losers of the race see it done. The bootstrap (schema ``audit`` and the
bookkeeping table) runs under the same lock.

Versions applied in the database but unknown to this code (a newer release ran)
are left alone.

Errors: :class:`MigrationError` and subclasses; psycopg2's ``OperationalError``
(connection lost, server gone) passes through for the caller to classify. A
failed migration is rolled back entirely; the versions before it stay applied.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
LOCK_TIMEOUT_MS = 5000
LOCK_KEY = 0x46414C434F4E4D47  # "FALCONMG": the migration advisory lock (bigint space)
FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS audit;
CREATE TABLE IF NOT EXISTS audit.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


class MigrationError(Exception):
    """Root of the migration errors."""


class MigrationFileError(MigrationError):
    """A file in the migrations directory is misnamed or repeats a version.
    Likely cause: a new file not named ``NNNN_lowercase_name.sql``."""


class ChecksumMismatch(MigrationError):
    """An applied migration's file changed since it was applied (the message
    names it). Likely cause: an edited released migration; add a new one instead."""


class MigrationFailed(MigrationError):
    """A migration's SQL failed (the message names the file); it was rolled back."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str  # sha256 hex of the file's bytes

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every ``*.sql`` migration in ``directory``, by version."""
    found: dict[int, Migration] = {}
    for path in sorted(Path(directory).glob("*.sql")):
        match = FILE_RE.match(path.name)
        if match is None:
            raise MigrationFileError(f"{path}: not named NNNN_lowercase_name.sql")
        data = path.read_bytes()
        version = int(match[1])
        if version in found:
            raise MigrationFileError(f"{path}: version {version} repeats "
                                     f"{found[version].filename}")
        found[version] = Migration(version, match[2], data.decode("utf-8"),
                                   hashlib.sha256(data).hexdigest())
    return [found[v] for v in sorted(found)]


def migrate(conn: Any, migrations: Sequence[Migration] | None = None) -> list[int]:
    """Apply the pending ``migrations`` (default: :func:`load`) on psycopg2
    connection ``conn``; return the versions this call applied.

    Commits per migration; leaves ``conn`` outside any transaction.
    """
    todo = load() if migrations is None else sorted(migrations, key=lambda m: m.version)
    with _locked(conn) as cur:
        cur.execute(BOOTSTRAP)
        verify(_applied(cur), todo)
    done = []
    for migration in todo:
        with _locked(conn) as cur:
            seen = _applied(cur)
            verify(seen, todo)
            if migration.version not in seen:
                _apply(cur, migration)
                done.append(migration.version)
    return done


def applied(conn: Any) -> dict[int, tuple[str, str]]:
    """``{version: (name, checksum)}`` of the applied migrations."""
    with _locked(conn) as cur:
        cur.execute(BOOTSTRAP)
        return _applied(cur)


def verify(applied: dict[int, tuple[str, str]], migrations: Sequence[Migration]) -> None:
    """Raise :class:`ChecksumMismatch` if a file differs from what was applied."""
    for m in migrations:
        if m.version in applied and applied[m.version] != (m.name, m.checksum):
            name, checksum = applied[m.version]
            raise ChecksumMismatch(
                f"{m.filename} changed after it was applied (applied as "
                f"{m.version:04d}_{name}.sql, sha256 {checksum[:12]}…; file now "
                f"sha256 {m.checksum[:12]}…): never edit a released migration, add a new one")


@contextmanager
def _locked(conn: Any) -> Iterator[Any]:
    """A transaction holding the migration lock; committed on success."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            yield cur
        conn.commit()
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: Any) -> None:
    """Roll back if the connection still works (a lost one rolled back already)."""
    try:
        if not conn.closed:
            conn.rollback()
    except psycopg2.Error:
        pass


def _applied(cur: Any) -> dict[int, tuple[str, str]]:
    cur.execute("SELECT version, name, checksum FROM audit.schema_migrations")
    return {int(v): (name, checksum) for v, name, checksum in cur.fetchall()}


def _apply(cur: Any, migration: Migration, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> None:
    # A migration that must wait for a table lock (an idle reader holds one) gives
    # up after lock_timeout_ms instead of queueing: a queued ACCESS EXCLUSIVE
    # request would block every new reader of the table behind it. The error is
    # an OperationalError: the shipper logs it and tries again later.
    cur.execute("SET LOCAL lock_timeout = %s", (f"{int(lock_timeout_ms)}ms",))
    try:
        cur.execute(migration.sql)
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        raise
    except psycopg2.Error as exc:
        raise MigrationFailed(f"{migration.filename}: {exc}".strip()) from None
    cur.execute("INSERT INTO audit.schema_migrations (version, name, checksum) "
                "VALUES (%s, %s, %s)", (migration.version, migration.name, migration.checksum))
