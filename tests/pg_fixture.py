"""Real PostgreSQL for tests: one embedded cluster per session, a database per module.

Use from ``tests/conftest.py``::

    from tests.pg_fixture import pg_cluster, pg_dsn  # noqa: F401  (fixtures)

- ``pg_cluster`` (session): an :class:`audit.pg.EmbeddedPostgres` on a free
  loopback port, in a directory of its own under the system temp dir. Stopped at
  the end with ``pg_ctl stop`` on *its* data dir, then the directory is removed.
- ``pg_dsn`` (module): the DSN of a fresh, empty database in that cluster.
- :func:`running_cluster` / :func:`fresh_database` for tests that need a cluster
  of their own (e.g. to stop and restart it).

Why not ``tmp_path``: as root, PostgreSQL runs as the ``postgres`` user, which
cannot traverse pytest's ``/tmp/pytest-of-root`` (mode 0700). The cluster lives
in ``mkdtemp()`` chmod 0711 (traversable, not listable); its data and socket
dirs are 0700 and owned by ``postgres``. Requires the PostgreSQL server binaries
(``apt-get install postgresql``); without them the fixtures fail, naming the package.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from audit.pg import EmbeddedPostgres, PgStartError
from falconctl.stack import free_port

START_ATTEMPTS = 3  # a free port can be taken between probing and binding it


def make_root(prefix: str = "falcon-pg-") -> Path:
    """A fresh directory the ``postgres`` user can traverse (see module doc)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o711)
    return root


@contextmanager
def running_cluster() -> Iterator[EmbeddedPostgres]:
    """A started cluster in a fresh directory; stopped and removed on exit."""
    root = make_root()
    pg = EmbeddedPostgres(root / "data", free_port(), socket_dir=root / "sock")
    try:
        pg.init()
        _start(pg)
        yield pg
    finally:
        pg.stop()  # this cluster only: pg_ctl -D <its data dir>
        shutil.rmtree(root)


def _start(pg: EmbeddedPostgres) -> None:
    for attempt in range(START_ATTEMPTS):
        try:
            pg.start()
            return
        except PgStartError:
            if attempt == START_ATTEMPTS - 1:
                raise
            pg.port = free_port()


def fresh_database(pg: EmbeddedPostgres, hint: str = "test") -> str:
    """Create an empty database named after ``hint``; its DSN."""
    slug = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")[-40:]
    name = f"t_{slug}_{uuid.uuid4().hex[:8]}"
    pg.create_database(name)
    return pg.dsn(name)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL for the whole test session."""
    with running_cluster() as pg:
        yield pg


@pytest.fixture(scope="module")
def pg_dsn(pg_cluster: EmbeddedPostgres, request: pytest.FixtureRequest) -> str:
    """A fresh database for the requesting test module."""
    return fresh_database(pg_cluster, request.module.__name__)
