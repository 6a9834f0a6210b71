"""Start and stop the processes of one host's stack: daemon, edge, HAProxy,
for the audit trail the shipper and (embedded default) PostgreSQL, and for the
prediction cache (embedded default of ``falconctl up``) a memcached.

Used by ``falconctl up`` (foreground, Ctrl-C stops everything in order) and by
the integration tests (real processes on free ports in a temp dir). Each
process runs in its own session so a terminal's Ctrl-C reaches only us; we
stop them outside-in: HAProxy first (no new requests), then the edge (gunicorn
finishes in-flight requests), then the daemon (drains, unlinks its segments).
Only processes started here are ever signalled, by pid.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import settings as settings_mod
from audit.pg import EmbeddedPostgres, PgPermissionError
from service.durable import write_atomically
from settings import Settings
from wire import frames

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "ops" / "haproxy" / "haproxy.cfg"
HOSTS_CFG = ROOT / "ops" / "haproxy" / "hosts.cfg"
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class StackError(RuntimeError):
    """A process of the stack did not start or become ready; the message says
    which, and the tail of its log."""


def split_hostport(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def haproxy_addr(edge_bind: str) -> str:
    return "unix@" + edge_bind[5:] if edge_bind.startswith("unix:") else edge_bind


def parse_hosts(spec: str) -> list[tuple[str, str]]:
    """``haproxy.hosts`` (``"a=10.0.0.2:8000,b=10.0.0.3:8000"``) -> [(name, address)].

    Raises :class:`~settings.ConfigError` naming the key."""
    hosts: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, addr = item.partition("=")
        host, _, port = addr.rpartition(":")
        if not sep or not HOST_NAME_RE.match(name) or not host or not port.isdigit() \
                or not 0 < int(port) < 65536:
            raise settings_mod.ConfigError(
                f"haproxy.hosts: {item!r}: expected name=address:port (name: letters, "
                "digits, '.', '_', '-')")
        if name in dict(hosts):
            raise settings_mod.ConfigError(f"haproxy.hosts: host {name!r} listed twice")
        hosts.append((name, addr))
    return hosts


def hosts_config(s: Settings) -> Path | None:
    """Render ``ops/haproxy/hosts.cfg`` with one ``server`` line per host of
    ``haproxy.hosts`` into ``<haproxy run_dir>/haproxy-hosts.cfg``; None when the
    setting is empty (single host)."""
    hosts = parse_hosts(s.haproxy.hosts)
    if not hosts:
        return None
    lines = [HOSTS_CFG.read_text()]
    lines += [f"    server {name} {addr} check\n" for name, addr in hosts]
    path = Path(s.haproxy_run_dir) / "haproxy-hosts.cfg"
    write_atomically(path, "".join(lines), mode=0o644)
    return path


def haproxy_files(s: Settings) -> list[str]:
    """The ``-f`` arguments HAProxy runs with: the main config, then the
    rendered multi-host backend when ``haproxy.hosts`` is set."""
    files = [s.haproxy.config or str(HAPROXY_CFG)]
    hosts = hosts_config(s)
    if hosts is not None:
        files.append(str(hosts))
    return [arg for f in files for arg in ("-f", f)]


def haproxy_env(s: Settings) -> dict[str, str]:
    """The environment ``ops/haproxy/haproxy.cfg`` expands. Also (re)writes the
    per-key limits map it names, from the keys file (:mod:`falconctl.keys`)."""
    from edge.proxyauth import ProxySecretError, load_or_create
    from falconctl.keys import write_limits_map

    try:
        secret = load_or_create(Path(s.proxy_secret_file))
    except (OSError, ProxySecretError) as exc:
        raise settings_mod.ConfigError(f"edge.proxy_secret_file: {exc}") from None
    edge = haproxy_addr(s.edge.bind)
    return {
        "FALCON_HAPROXY_ID": s.host_id,
        "FALCON_HAPROXY_BACKEND": "hosts" if parse_hosts(s.haproxy.hosts) else "edges",
        "FALCON_HAPROXY_BIND": s.haproxy.bind,
        "FALCON_HAPROXY_STATS_BIND": s.haproxy.stats_bind,
        "FALCON_HAPROXY_ADMIN_SOCKET": s.haproxy_socket,
        "FALCON_EDGE_ADDR": edge,
        "FALCON_EDGE2_ADDR": haproxy_addr(s.haproxy.edge2) if s.haproxy.edge2 else edge,
        "FALCON_HAPROXY_MAX_BODY_BYTES": str(s.haproxy.max_body_bytes),
        "FALCON_HAPROXY_EDGE_MAXCONN": str(s.edge.workers * s.edge.threads),
        "FALCON_HAPROXY_SERVER_TIMEOUT": f"{s.edge.deadline_ms + 5000}ms",
        "FALCON_HAPROXY_QUEUE_TIMEOUT": f"{queue_timeout_ms(s)}ms",
        "FALCON_HAPROXY_RATE_WINDOW": f"{s.haproxy.rate_window_s}s",
        "FALCON_HAPROXY_RETRY_AFTER": str(s.haproxy.rate_window_s),
        "FALCON_HAPROXY_RATE_PER_IP": str(s.haproxy.rate_per_ip),
        "FALCON_HAPROXY_RATE_PER_KEY": str(s.haproxy.rate_per_key),
        "FALCON_HAPROXY_KEY_LIMITS_MAP": str(write_limits_map(s)),
        "FALCON_HAPROXY_PROXY_SECRET": secret,
        "FALCON_HAPROXY_GRPC_BIND": s.grpc.public_bind,
        "FALCON_GRPC_ADDR": s.grpc.bind,
        "FALCON_GRPC2_ADDR": s.grpc.bind2 or s.grpc.bind,
    }


def queue_timeout_ms(s: Settings) -> int:
    """HAProxy's ``timeout queue``: ``haproxy.queue_timeout_ms``, else half the deadline.
    Raises ConfigError for a queue timeout that leaves the request no time to be served."""
    if s.haproxy.queue_timeout_ms >= s.edge.deadline_ms:
        raise settings_mod.ConfigError(
            f"haproxy.queue_timeout_ms: {s.haproxy.queue_timeout_ms} ms leaves nothing of "
            f"edge.deadline_ms ({s.edge.deadline_ms} ms) to serve the request; set it "
            f"below, or 0 for half of it")
    return s.haproxy.queue_timeout_ms or max(1, s.edge.deadline_ms // 2)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(host: str, port: int, path: str, timeout: float = 1.0) -> int | None:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


def daemon_ready(path: str, timeout: float = 1.0) -> bool:
    from wire import ops
    from wire.messages import MessageError

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(frames.encode(frames.REQUEST, ops.Request(1, ops.Ping(), 1000).to_wire()))
            _, resp = frames.read_frame(sock)
        answer = ops.Response.from_wire(resp, ops.PingAnswer).answer
        return isinstance(answer, ops.PingAnswer) and answer.ready
    except (OSError, frames.WireError, MessageError):
        return False


def grpc_live(target: str, timeout: float = 1.0) -> bool:
    """Whether the gRPC face at ``target`` answers ``ServerLive`` (imported lazily: grpcio
    loads only where a gRPC process is started)."""
    from edge.grpcface.server import answers

    return answers(target, timeout)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    argv: list[str] = field(default_factory=list)  # as started: respawn() runs it again
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@dataclass
class Stack:
    """One host's processes. ``env`` holds the ``FALCON_*`` settings for all of them."""

    env: dict[str, str]
    log_dir: Path
    python: str = sys.executable
    procs: dict[str, Proc] = field(default_factory=dict)
    postgres: EmbeddedPostgres | None = None

    @property
    def settings(self) -> Settings:
        return settings_mod.load(env=self.env)

    def _spawn(self, name: str, argv: list[str], extra_env: Mapping[str, str] = {}) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as fh:
            popen = subprocess.Popen(argv, env={**self.env, **extra_env}, stdout=fh,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=ROOT)
        proc = Proc(name, popen, log, list(argv), dict(extra_env))
        self.procs[name] = proc
        return proc

    def respawn(self, name: str) -> Proc:
        """Start ``name`` again as it was started (same argv, so the same ports and
        paths), without waiting for it to be ready: ``falconctl up`` restarting a
        component that exited (:mod:`falconctl.supervisor`)."""
        old = self.procs[name]
        return self._spawn(name, old.argv, old.extra_env)

    def _wait(self, proc: Proc, check: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise StackError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            if check():  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise StackError(f"{proc.name} not ready after {timeout:.0f}s:\n{proc.tail()}")

    def start_daemon(self, timeout: float = 180.0) -> Proc:
        proc = self._spawn("daemon", [self.python, "-m", "falconctl", "daemon"])
        path = self.settings.daemon_socket
        self._wait(proc, lambda: daemon_ready(path), timeout)
        return proc

    def start_edge(self, timeout: float = 60.0, name: str = "edge", bind: str = "") -> Proc:
        """An edge (gunicorn); ``bind`` other than the configured one starts a
        second edge, e.g. the ``haproxy.edge2`` slot."""
        bind = bind or self.settings.edge.bind
        proc = self._spawn(name, [self.python, "-m", "falconctl", "edge"],
                           {"FALCON_EDGE_BIND": bind})
        if bind.startswith("unix:"):
            self._wait(proc, lambda: os.path.exists(bind[5:]), timeout)
        else:
            host, port = split_hostport(bind)
            self._wait(proc, lambda: http_status(host, port, "/v2/health/live") == 200, timeout)
        return proc

    def start_grpc(self, timeout: float = 60.0, name: str = "grpc", bind: str = "") -> Proc:
        """The gRPC face (``falconctl grpc``), ready once ``ServerLive`` answers;
        ``bind`` other than the configured one starts a second, e.g. the
        ``grpc.bind2`` slot."""
        bind = bind or self.settings.grpc.bind
        proc = self._spawn(name, [self.python, "-m", "falconctl", "grpc"],
                           {"FALCON_GRPC_BIND": bind})
        self._wait(proc, lambda: grpc_live(bind), timeout)
        return proc

    def start_haproxy(self, timeout: float = 30.0) -> Proc:
        s = self.settings
        binary = shutil.which(s.haproxy.binary) or s.haproxy.binary
        proc = self._spawn("haproxy", [binary, "-W", "-db", *haproxy_files(s)], haproxy_env(s))
        host, port = split_hostport(s.haproxy.bind)
        self._wait(proc, lambda: http_status(host, port, "/v2/health/ready") == 200, timeout)
        return proc

    def reload_haproxy(self) -> None:
        """Graceful reload (SIGUSR2 to the master): new workers take over the
        listening sockets, old ones finish their connections."""
        self.procs["haproxy"].popen.send_signal(signal.SIGUSR2)

    def start_postgres(self, timeout: float = 120.0) -> EmbeddedPostgres | None:
        """The embedded audit database (``<state_dir>/postgres``, loopback only),
        unless ``audit.dsn`` names one; sets ``FALCON_AUDIT_DSN`` for the shipper."""
        s = self.settings
        if s.audit.dsn:
            return None
        pg = EmbeddedPostgres(Path(s.paths.state_dir) / "postgres", free_port(),
                              socket_dir=Path(s.paths.run_dir) / "postgres")
        try:
            pg.init()
        except PgPermissionError:
            # As root the cluster runs as 'postgres', which cannot reach a state dir
            # under a private home (e.g. a checkout in /root): use postgres's own home.
            home = Path(pwd.getpwnam("postgres").pw_dir) / "falcon-embedded"
            key = hashlib.sha1(s.paths.state_dir.encode()).hexdigest()[:12]
            pg = EmbeddedPostgres(home / key / "data", pg.port, socket_dir=home / key / "sock")
            pg.init()
        pg.start(timeout)
        self.postgres = pg
        pg.create_database("falcon")
        self.env["FALCON_AUDIT_DSN"] = pg.dsn("falcon")
        return pg

    def start_memcached(self, timeout: float = 30.0) -> Proc | None:
        """A memcached of our own on a free loopback port for the prediction cache
        (64 MB, no UDP), unless ``cache.servers`` names some; sets
        ``FALCON_CACHE_SERVERS`` for the edge. As root it runs as ``memcache``
        (Debian's package user), else as ``nobody``."""
        if self.settings.cache.servers:
            return None
        port = free_port()
        argv = [shutil.which("memcached") or "memcached", "-l", "127.0.0.1", "-p", str(port),
                "-U", "0", "-m", "64"]
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("memcache")
                argv += ["-u", "memcache"]
            except KeyError:
                argv += ["-u", "nobody"]
        proc = self._spawn("memcached", argv)

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False
        self._wait(proc, accepting, timeout)
        self.env["FALCON_CACHE_SERVERS"] = f"127.0.0.1:{port}"
        return proc

    def start_shipper(self, timeout: float = 60.0) -> Proc:
        proc = self._spawn("shipper", [self.python, "-m", "falconctl", "ship"])
        self._wait(proc, lambda: "shipping" in proc.tail(5), timeout)
        return proc

    def start_reconciler(self, timeout: float = 60.0) -> Proc:
        """This host's fleet reconciler (``falconctl reconcile``, needs ``fleet.dsn``),
        ready once its loop runs (PostgreSQL may be down: it retries by itself)."""
        proc = self._spawn("reconciler", [self.python, "-m", "falconctl", "reconcile"])
        self._wait(proc, lambda: "reconciling host" in proc.tail(200), timeout)
        return proc

    def start(self, audit: bool = False, cache: bool = False, grpc: bool = False) -> None:
        """daemon, edge, HAProxy; with ``audit`` also PostgreSQL and the shipper;
        with ``cache`` a memcached (unless ``cache.servers`` names some); with
        ``grpc`` the gRPC face."""
        try:
            if audit:
                self.start_postgres()
                self.start_shipper()
            if cache:
                self.start_memcached()
            self.start_daemon()
            if self.settings.fleet.dsn:  # the fleet's desired state (docs/several-hosts.md)
                self.start_reconciler()
            self.start_edge()
            if grpc:
                self.start_grpc()
            self.start_haproxy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict[str, int]:
        """Stop outside-in; return each process's exit code."""
        codes = {}
        for name, sig in (("haproxy", signal.SIGUSR1), ("grpc", signal.SIGTERM),
                          ("grpc2", signal.SIGTERM),
                          ("edge", signal.SIGTERM),
                          ("edge2", signal.SIGTERM), ("memcached", signal.SIGTERM),
                          ("shipper", signal.SIGTERM), ("reconciler", signal.SIGTERM),
                          ("daemon", signal.SIGTERM)):
            proc = self.procs.pop(name, None)
            if proc is not None:
                codes[name] = proc.stop(sig)
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
        return codes
