"""An embedded PostgreSQL cluster: our own data dir, port and socket dir.

:class:`EmbeddedPostgres` drives the Debian (or any) PostgreSQL binaries
directly — ``initdb`` and ``pg_ctl`` on a data directory we own — and never
touches the distribution's clusters or the system service. It serves the audit
table when ``audit.dsn`` is empty (``falconctl up``) and the tests.

Layout and network::

    <data_dir>/            initdb's files (mode 0700), owned by the OS user
    <data_dir>/server.log  the server's log (pg_ctl -l); start errors quote its tail
    <socket_dir>/          .s.PGSQL.<port> (omitted: no Unix socket at all)
    127.0.0.1:<port>       the only TCP listener: loopback, never a public address

Running as root: PostgreSQL refuses to run as root, so when the effective uid
is 0 every binary runs as the ``postgres`` system user (``setpriv``), and
:meth:`EmbeddedPostgres.init` hands ``data_dir`` and ``socket_dir`` to it. That
user must be able to reach them: every parent directory needs ``o+x``. Note
that pytest's ``/tmp/pytest-of-root`` is 0700, so tests put the cluster in a
directory of their own (``tests/pg_fixture.py``: ``mkdtemp`` + ``chmod 0711``).

APPSEC: initdb sets ``trust`` authentication for the Unix socket and loopback,
the server listens on 127.0.0.1 only, and the socket dir is 0700. Any local
user who can reach 127.0.0.1:<port> can connect as the superuser; use a DSN to a
managed server with real credentials where local users are not trusted.

Errors: :class:`PgError` and its subclasses, named for the cause.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import make_dsn

SUPERUSER = "postgres"
OS_USER = "postgres"
SEARCH_GLOB = "/usr/lib/postgresql/*/bin"
REQUIRED = ("initdb", "pg_ctl", "postgres")

# Appended to postgresql.conf by init(); port, addresses and sockets are given at start.
SERVER_CONF = """
# --- falcon EmbeddedPostgres ---
shared_buffers = '16MB'
fsync = on
synchronous_commit = on
full_page_writes = on
max_connections = 50
"""


class PgError(Exception):
    """Root of the embedded-cluster errors."""


class PgBinariesMissing(PgError):
    """initdb/pg_ctl/postgres were not found. Likely cause: PostgreSQL is not
    installed (``apt-get install postgresql``)."""


class PgPermissionError(PgError):
    """The OS user running PostgreSQL cannot reach the data or socket directory.
    Likely cause: running as root with a parent directory not traversable by
    ``postgres`` (e.g. pytest's 0700 ``/tmp/pytest-of-root``)."""


class PgInitError(PgError):
    """initdb failed (message carries its output). Likely cause: a non-empty
    directory that is not a cluster, or a full disk."""


class PgStartError(PgError):
    """The server did not start (message carries the log tail). Likely cause:
    the port is in use, or a data dir of another PostgreSQL major version."""


class PgStopError(PgError):
    """The server did not stop within the timeout (it may still be running)."""


class PgDatabaseError(PgError):
    """A maintenance query (create database) failed; likely cause: server down."""


def find_bindir(version: str | None = None) -> Path:
    """The directory holding initdb, pg_ctl and postgres.

    ``version`` (a data dir's ``PG_VERSION``) asks for that major version's
    binaries. Otherwise ``pg_config --bindir`` wins, then the newest
    ``/usr/lib/postgresql/<major>/bin``. Raises :class:`PgBinariesMissing`.
    """
    candidates = [] if version else _pg_config_bindir()
    found = sorted(Path("/").glob(SEARCH_GLOB.lstrip("/")), key=_major, reverse=True)
    candidates += [p for p in found if version is None or p.parent.name == version]
    for bindir in candidates:
        if all((bindir / name).is_file() for name in REQUIRED):
            return bindir
    wanted = f"PostgreSQL {version} " if version else "PostgreSQL "
    raise PgBinariesMissing(f"{wanted}server binaries ({', '.join(REQUIRED)}) not found via "
                            f"pg_config or {SEARCH_GLOB}: apt-get install postgresql")


def _pg_config_bindir() -> list[Path]:
    exe = shutil.which("pg_config")
    if exe is None:
        return []
    out = subprocess.run([exe, "--bindir"], capture_output=True, text=True, check=False)
    return [Path(out.stdout.strip())] if out.returncode == 0 and out.stdout.strip() else []


def _major(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1:``port``
    (and a Unix socket in ``socket_dir`` if given).

    Raises :class:`PgError` subclasses. ``stop()`` leaves the data dir intact;
    nothing here deletes files.
    """

    def __init__(self, data_dir: Path, port: int, socket_dir: Path | None = None, *,
                 bindir: Path | None = None, os_user: str = OS_USER, host: str = "127.0.0.1",
                 wrap: Sequence[str] = ()) -> None:
        """``host``: the one address it listens on; ``wrap``: a command prefix for
        every PostgreSQL program (e.g. ``nsenter --net=...`` to run it in a test's
        network namespace)."""
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.host = host
        self.wrap = list(wrap)
        self.socket_dir = Path(socket_dir).absolute() if socket_dir else None
        self.os_user = os_user
        self._bindir = bindir

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            version = self.data_dir / "PG_VERSION"
            self._bindir = find_bindir(version.read_text().strip() if version.is_file() else None)
        return self._bindir

    # -- lifecycle ---------------------------------------------------------------------

    def init(self) -> bool:
        """initdb if ``data_dir`` holds no cluster yet; True if it did."""
        if (self.data_dir / "PG_VERSION").is_file():
            return False
        self._prepare_dir(self.data_dir)
        if self.socket_dir:
            self._prepare_dir(self.socket_dir)
        out = self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8",
                        "--no-locale", "--auth-local=trust", "--auth-host=trust",
                        "--data-checksums", timeout=300)
        if out.returncode != 0:
            raise PgInitError(f"initdb {self.data_dir} failed:\n{out.stdout}{out.stderr}")
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(SERVER_CONF)
        return True

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections (no-op if running)."""
        if self.running():
            return
        sockets = shlex.quote(str(self.socket_dir) if self.socket_dir else "")
        options = (f"-c listen_addresses={shlex.quote(self.host)} -p {int(self.port)} "
                   f"-k {sockets}")
        out = self._pg_ctl("start", "-w", "-t", str(max(1, round(timeout))),
                           "-l", str(self.log_path), "-o", options, timeout=timeout + 30)
        if out.returncode != 0:
            raise PgStartError(f"PostgreSQL in {self.data_dir} on port {self.port} did not "
                               f"start: {out.stderr.strip()}\n--- {self.log_path} (tail) ---\n"
                               f"{self.log_tail()}")

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server (``pg_ctl -m mode``) and wait; no-op if not running."""
        if not self.running():
            return
        out = self._pg_ctl("stop", "-w", "-m", mode, "-t", str(max(1, round(timeout))),
                           timeout=timeout + 30)
        if out.returncode != 0 and self.running():
            raise PgStopError(f"PostgreSQL in {self.data_dir} did not stop: {out.stderr.strip()}")

    def running(self) -> bool:
        """True if a postmaster is running on ``data_dir`` (``pg_ctl status``)."""
        if not (self.data_dir / "postmaster.pid").is_file():
            return False
        return self._pg_ctl("status", timeout=30).returncode == 0

    # -- clients -----------------------------------------------------------------------

    def dsn(self, dbname: str = "falcon") -> str:
        """A libpq DSN for ``dbname`` over loopback TCP as the superuser."""
        return str(make_dsn(host=self.host, port=self.port, dbname=dbname, user=SUPERUSER))

    def create_database(self, name: str) -> bool:
        """Create database ``name`` unless it exists; True if this call created it."""
        try:
            conn = psycopg2.connect(self.dsn("postgres"), connect_timeout=10)
        except psycopg2.Error as exc:
            raise PgDatabaseError(f"cannot connect to create database {name!r}: {exc}") from None
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone():
                    return False
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                return True
        except psycopg2.errors.DuplicateDatabase:
            return False  # created concurrently by someone else
        except psycopg2.Error as exc:
            raise PgDatabaseError(f"create database {name!r}: {exc}") from None
        finally:
            conn.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    # -- helpers -----------------------------------------------------------------------

    def _as_owner(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["setpriv", f"--reuid={self.os_user}", f"--regid={self.os_user}",
                "--init-groups", "--"]

    def _prepare_dir(self, path: Path) -> None:
        """Create ``path`` (0700) for the OS user and check that it can write there."""
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(self.os_user)
            except KeyError:
                raise PgBinariesMissing(f"no {self.os_user!r} system user: "
                                        "apt-get install postgresql") from None
            os.chown(path, user.pw_uid, user.pw_gid)
        path.chmod(0o700)
        if self._exec(["test", "-w", str(path), "-a", "-x", str(path)], 30).returncode != 0:
            raise PgPermissionError(
                f"user {self.os_user!r} cannot write {path}: every parent directory must be "
                "traversable (o+x) by it; create a directory of your own (e.g. mkdtemp, "
                "chmod 0711) instead of a 0700 one such as /tmp/pytest-of-root")

    def _pg_ctl(self, action: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", action, "-D", str(self.data_dir), *args, timeout=timeout)

    def _run(self, binary: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return self._exec([str(self.bindir / binary), *args], timeout)

    def _exec(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_MESSAGES"] = "C"
        try:
            return subprocess.run([*self.wrap, *self._as_owner(), *argv], capture_output=True,
                                  text=True,
                                  cwd="/", env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PgError(f"{argv[0]} did not finish within {timeout:.0f}s") from exc
        except FileNotFoundError as exc:
            raise PgBinariesMissing(f"{exc.filename}: apt-get install postgresql") from None
