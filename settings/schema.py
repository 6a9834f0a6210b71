"""The settings schema: one dataclass per section, one field per key.

Each field carries its description and bounds in ``metadata`` (see :func:`key`).
:func:`load` merges defaults, the TOML file and ``FALCON_*`` environment
variables, converts and validates every value, and raises :class:`ConfigError`
naming the key (and the environment variable or file it came from).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/falcon/falcon.toml")
ENV_PREFIX = "FALCON_"
log = logging.getLogger("falcon.settings")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of bounds.
    The message names the key and the source (file or environment variable)."""


def key(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
        choices: tuple[str, ...] | None = None, pattern: str | None = None,
        formerly: str | None = None) -> Any:
    """Declare one setting: its default, a description and optional bounds
    (``pattern``: a regular expression a non-empty string must match whole).
    ``formerly``: the key's old name, still accepted (file and environment) with a
    deprecation warning naming the new one; both at once is an error."""
    return field(default=default, metadata={"doc": doc, "min": min, "max": max,
                                            "choices": choices, "pattern": pattern,
                                            "formerly": formerly})


def deprecated(where: str, old: str, new: str) -> None:
    """Warn, once per process and place, that ``old`` is read as ``new``."""
    if (where, old) in _WARNED:
        return
    _WARNED.add((where, old))
    log.warning("%s: '%s' is deprecated, read as '%s': rename it", where, old, new)


_WARNED: set[tuple[str, str]] = set()


def doc_of(f: Any) -> str:
    """A declared key's description, its old name included."""
    old = f.metadata.get("formerly")
    return f.metadata["doc"] + (f" (Formerly '{old}': still read, with a warning.)" if old else "")


@dataclass(frozen=True)
class PathSettings:
    run_dir: str = key("/run/falcon", "Runtime directory: the daemon socket, pid files.")
    state_dir: str = key("/var/lib/falcon", "State directory: WAL, generated configs.")


@dataclass(frozen=True)
class DaemonSettings:
    socket: str = key("", "Unix socket the daemon listens on; empty means <run_dir>/daemon.sock.")
    model_repository: str = key("/var/lib/falcon/models",
                                "Model repository: <repo>/<model>/<version>/model.onnx "
                                "and <repo>/<model>/config.toml.")
    shm_prefix: str = key("falcon", "Prefix of the POSIX shared-memory segment names.")
    inference_threads: int = key(2, "Threads running ONNX Runtime sessions.", min=1, max=64)
    intra_op_threads: int = key(0, "ONNX Runtime intra-op threads per session (0 = ORT default).",
                                min=0, max=64)
    max_inflight: int = key(256, "Requests admitted at once; beyond it the daemon answers "
                                 "'overloaded' (edge: 503).", min=1, max=100000)
    max_frame_bytes: int = key(64 << 20, "Largest wire frame accepted, in bytes.",
                               min=1024, max=1 << 31)
    drain_timeout_s: float = key(10.0, "On SIGTERM, how long in-flight requests may finish.",
                                 min=0, max=600)
    keep_segments: bool = key(False, "Leave shared-memory segments in place on a clean stop, "
                                     "so the next start re-attaches instead of loading.")


@dataclass(frozen=True)
class EdgeSettings:
    bind: str = key("127.0.0.1:8000", "host:port (or unix:/path) gunicorn listens on.")
    workers: int = key(2, "gunicorn worker processes.", min=1, max=256)
    worker_class: str = key("gevent", "gunicorn worker class: 'gevent' (one thread, a "
                                      "greenlet per request: no thread hand-off per request) "
                                      "or 'gthread' (a thread pool per worker).",
                            choices=("gevent", "gthread"))
    threads: int = key(32, "Requests in flight per gunicorn worker: HAProxy sends the edge "
                           "at most workers x threads at once (its server maxconn); under "
                           "gthread also the pool's size (under gevent a greenlet per "
                           "connection, up to max(1000, 4 x threads) open). They mostly wait "
                           "on the daemon; more in flight let bigger batches form.",
                       min=1, max=1024)
    deadline_ms: int = key(2000, "Default request deadline; a client may lower it with the "
                                 "'X-Request-Timeout-Ms' header.", min=10, max=600000)
    max_body_bytes: int = key(16 << 20, "Largest request body accepted (413 beyond).",
                              min=1024, max=1 << 30)
    max_request_rows: int = key(1024, "Upper bound on rows per request for every model "
                                      "(a model's max_request_rows can only lower it).",
                                min=1, max=1 << 20, formerly="max_batch_rows")
    metadata_ttl_s: float = key(2.0, "How long a worker caches model metadata.", min=0, max=3600)
    graceful_timeout_s: int = key(30, "gunicorn graceful timeout on stop/reload.", min=1, max=3600)
    drain_s: float = key(2.5, "On SIGTERM, how long the edge reports not-ready (so HAProxy's "
                              "health check takes it out) before it stops accepting.",
                         min=0, max=600)
    breaker_fail_max: int = key(5, "Consecutive failures to reach the daemon that open its "
                                   "circuit breaker (then 503 at once).", min=1, max=1000)
    breaker_reset_s: float = key(1.0, "How long the daemon breaker stays open before a trial "
                                      "call.", min=0.05, max=600)
    proxy_secret_file: str = key("", "The secret HAProxy sends the edges (X-Falcon-Proxy-Secret; "
                                     "HAProxy's headers are refused without it); made if "
                                     "missing. Empty means <state_dir>/proxy.secret. Hosts "
                                     "behind one HAProxy share the front's file.")


@dataclass(frozen=True)
class GrpcSettings:
    bind: str = key("127.0.0.1:8001", "host:port the gRPC face (`falconctl grpc`: "
                                      "inference.GRPCInferenceService) listens on, cleartext "
                                      "HTTP/2 for HAProxy.")
    threads: int = key(32, "Calls the gRPC process serves at once (its thread pool); more "
                           "wait in grpcio's queue.", min=1, max=1024)
    max_message_bytes: int = key(16 << 20, "Largest gRPC message received or sent "
                                           "(RESOURCE_EXHAUSTED beyond).",
                                 min=1024, max=1 << 30)
    public_bind: str = key("127.0.0.1:8081", "Address HAProxy takes gRPC calls on (h2c).")
    bind2: str = key("", "A second gRPC process behind HAProxy (host:port), the standby that "
                         "takes the calls while the first restarts; empty: the first only.")


@dataclass(frozen=True)
class HAProxySettings:
    bind: str = key("127.0.0.1:8080", "Public address HAProxy listens on.")
    stats_bind: str = key("127.0.0.1:8404", "HAProxy stats and Prometheus exporter address.")
    binary: str = key("haproxy", "HAProxy executable.")
    config: str = key("", "HAProxy config file; empty means the project's ops/haproxy/haproxy.cfg.")
    run_dir: str = key("", "HAProxy's runtime directory: its runtime API socket (haproxy.sock, "
                           "used by `falconctl hosts` and `falconctl keys`), environment file, "
                           "rendered hosts backend and per-key limits map. Empty means "
                           "<run_dir>; under systemd /run/falcon-haproxy, HAProxy's own "
                           "(it runs as its own user, falcon-haproxy).")
    max_body_bytes: int = key(16 << 20, "Body limit HAProxy enforces (413 beyond).",
                              min=1024, max=1 << 30)
    queue_timeout_ms: int = key(0, "How long a request may wait in HAProxy's queue for a free "
                                   "edge slot before it is refused (503 with Retry-After); 0 "
                                   "means half of edge.deadline_ms. The rest of the deadline is "
                                   "left for the work: a request that queued for all of it would "
                                   "reach the daemon with no time left, cost a model run and "
                                   "fail anyway (504), so under overload fewer would succeed.",
                                min=0, max=3_600_000)
    edge2: str = key("", "A second edge behind HAProxy (host:port); empty: the first edge only.")
    hosts: str = key("", "Several serving hosts behind this HAProxy, 'name=address:port,...' "
                         "(their edges' binds); empty: this host's own edge. See README "
                         "'Running on several hosts' and ops/haproxy/hosts.cfg.")
    rate_window_s: int = key(10, "Window of the rate limits, in seconds (HAProxy stick tables "
                                 "store http_req_rate over it); also the 429's Retry-After.",
                             min=1, max=3600)
    rate_per_ip: int = key(100000, "Requests one source address may send per window "
                                   "(429 beyond).", min=1, max=1 << 30)
    rate_per_key: int = key(50000, "Requests one API key may send per window, for keys of "
                                   "the default class (429 beyond).", min=1, max=1 << 30)
    key_classes: str = key("", "Other per-key limits, 'class=requests,class=requests' (per "
                               "window), e.g. 'high=500000,trial=100'; a key gets one with "
                               "`falconctl keys create --class NAME`.")


@dataclass(frozen=True)
class HostSettings:
    id: str = key("", "This host's id in request ids and keys, WAL stream names and audit "
                      "rows; empty means the hostname. Unique per host.",
                  pattern=r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class AuditSettings:
    enabled: bool = key(True, "Write every served prediction to the WAL before answering.")
    wal_dir: str = key("", "WAL directory; empty means <state_dir>/wal.")
    sync: str = key("batch", "When an appended record is fsynced before the response: "
                             "'always' (each record), 'batch' (group commit), 'interval' "
                             "(background, every interval_ms). A kill -9 of any process loses "
                             "nothing in every mode; the modes differ on power loss.",
                    choices=("always", "batch", "interval"))
    interval_ms: int = key(50, "fsync period of the 'interval' policy.", min=1, max=60000)
    segment_bytes: int = key(64 << 20, "WAL segment size before rolling to a new file.",
                             min=4096, max=1 << 32)
    min_free_bytes: int = key(256 << 20, "Disk-space guard: below this many free bytes on the "
                                         "WAL's filesystem, predictions are refused (503).",
                              min=0, max=1 << 50)
    retry_s: float = key(5.0, "After a WAL write or fsync error, how long the worker refuses "
                              "predictions and reports not-ready before it opens a new stream "
                              "(doubled while new streams keep failing, up to 60 s).",
                         min=0.1, max=60)
    max_input_bytes: int = key(64 << 10, "Inputs up to this size are stored in the record "
                                         "(always their digest).", min=0, max=64 << 20)
    dsn: str = key("", "PostgreSQL DSN for the audit table; empty means the embedded cluster "
                       "under <state_dir>/postgres (started by `falconctl up`).")
    ship_batch: int = key(1000, "Records per shipper transaction.", min=1, max=100000)
    ship_poll_ms: int = key(200, "How often the shipper looks for new records.", min=10,
                            max=60000)


@dataclass(frozen=True)
class CacheSettings:
    servers: str = key("", "Memcached servers for the prediction cache, 'host:port,host:port' "
                           "(consistent hashing across them); empty turns the cache off.")
    timeout_ms: int = key(50, "Connect and I/O timeout per cache call; a slower cache is a miss.",
                          min=1, max=10000)
    secret_file: str = key("", "The key cached values are authenticated with (HMAC-SHA256; a "
                               "value that does not verify is a miss); made if missing. Empty "
                               "means <state_dir>/cache.secret. Hosts sharing a memcached pool "
                               "share this file.")


@dataclass(frozen=True)
class AuthSettings:
    enabled: bool = key(True, "Require an API key (Authorization: Bearer, or X-API-Key) for "
                              "predictions and the management API; health, /metrics and "
                              "/openapi.json stay open. Off: a loud warning at start-up.")
    keys_file: str = key("", "The API keys file (written by `falconctl keys`); empty means "
                             "<state_dir>/keys.json.")
    reload_s: float = key(1.0, "How often each edge worker checks the keys file for changes "
                               "(a revocation applies everywhere within this).",
                          min=0, max=3600)


@dataclass(frozen=True)
class FleetSettings:
    dsn: str = key("", "PostgreSQL DSN of the fleet's desired model state (fleet/store.py; may "
                       "be the audit database): needed by `falconctl hosts load|unload|split|"
                       "rollback|status|history` and by this host's reconciler (`falconctl "
                       "reconcile`). Empty: no fleet state; each host's models are its own.")
    interval_s: float = key(10.0, "How often the reconciler re-reads the fleet state even "
                                  "without a notification (a missed NOTIFY, a restarted "
                                  "daemon), and the longest back-off while PostgreSQL is down. "
                                  "The host is named by host.id.", min=0.2, max=3600)


@dataclass(frozen=True)
class TracingSettings:
    endpoint: str = key("", "OTLP/HTTP traces endpoint, e.g. 'http://127.0.0.1:4318/v1/traces'; "
                            "empty turns tracing off (no span is made). On: the edge's request "
                            "span and its children, the daemon's queue and batch spans, "
                            "exported in the background (see docs/operations.md 'Tracing').",
                        pattern=r"https?://\S+")
    sample_ratio: float = key(0.1, "Share of requests without a sampled parent that are traced "
                                   "(parent-based: a request whose 'traceparent' says sampled is "
                                   "traced, one that says not sampled is not).", min=0, max=1)
    service_name: str = key("falcon", "Prefix of the OpenTelemetry service.name: "
                                      "'<prefix>-edge', '<prefix>-daemon', '<prefix>-grpc'.",
                            pattern=r"[A-Za-z0-9._-]{1,64}")
    max_queue_spans: int = key(2048, "Ended spans a process holds for export; beyond it spans "
                                     "are dropped (counted in falcon_trace_spans_dropped_total), "
                                     "never waited for.", min=16, max=1 << 20)
    export_timeout_ms: int = key(2000, "Time one export may take (a collector that is down or "
                                       "slow costs the background exporter this, no request "
                                       "anything).", min=10, max=60000)


@dataclass(frozen=True)
class Settings:
    paths: PathSettings = field(default_factory=PathSettings)
    host: HostSettings = field(default_factory=HostSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    edge: EdgeSettings = field(default_factory=EdgeSettings)
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    haproxy: HAProxySettings = field(default_factory=HAProxySettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)

    @property
    def daemon_socket(self) -> str:
        return self.daemon.socket or os.path.join(self.paths.run_dir, "daemon.sock")

    @property
    def host_id(self) -> str:
        return self.host.id or socket.gethostname()

    @property
    def wal_dir(self) -> str:
        return self.audit.wal_dir or os.path.join(self.paths.state_dir, "wal")

    @property
    def cache_secret_file(self) -> str:
        return self.cache.secret_file or os.path.join(self.paths.state_dir, "cache.secret")

    @property
    def proxy_secret_file(self) -> str:
        return self.edge.proxy_secret_file or os.path.join(self.paths.state_dir, "proxy.secret")

    @property
    def haproxy_run_dir(self) -> str:
        return self.haproxy.run_dir or self.paths.run_dir

    @property
    def haproxy_socket(self) -> str:
        """HAProxy's runtime API (level admin): ``<haproxy run_dir>/haproxy.sock``."""
        return os.path.join(self.haproxy_run_dir, "haproxy.sock")

    @property
    def keys_file(self) -> str:
        return self.auth.keys_file or os.path.join(self.paths.state_dir, "keys.json")

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Setting:
    """One declared key, for documentation and ``falconctl config --describe``."""

    section: str
    name: str
    type: type
    default: Any
    doc: str

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section}_{self.name}".upper()


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Settings)}  # type: ignore[misc]


def _declared() -> list[Setting]:
    out = []
    for section, cls in _sections().items():
        for f in dataclasses.fields(cls):
            out.append(Setting(section, f.name, _type_of(cls, f), f.default, doc_of(f)))
    return out


def _type_of(cls: type, f: dataclasses.Field) -> type:
    hints = {"str": str, "int": int, "float": float, "bool": bool}
    return hints[f.type] if isinstance(f.type, str) else f.type  # type: ignore[return-value]


SETTINGS: list[Setting] = _declared()


def _convert(raw: Any, typ: type, where: str, from_env: bool = False) -> Any:
    """Convert a TOML value (typed already: checked, not parsed) or an
    environment string (parsed) to ``typ``."""
    if from_env and typ is not str:
        text = raw.strip().lower()
        if typ is bool:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected a boolean (true/false), got {raw!r}")
        try:
            return typ(text)
        except ValueError:
            raise ConfigError(f"{where}: expected {typ.__name__}, got {raw!r}") from None
    if typ is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if not isinstance(raw, typ) or (typ is int and isinstance(raw, bool)):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {type(raw).__name__} {raw!r}")
    return raw


def _check_bounds(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{where}: {value!r} is below the minimum {meta['min']}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{where}: {value!r} is above the maximum {meta['max']}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(meta['choices'])}")
    if meta.get("pattern") and value and not re.fullmatch(meta["pattern"], value):
        raise ConfigError(f"{where}: {value!r} does not match {meta['pattern']}")


def _read_file(path: Path | None, env: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    if path is None:
        env_path = env.get(f"{ENV_PREFIX}CONFIG")
        path = Path(env_path) if env_path else DEFAULT_CONFIG_PATH
        if not env_path and not path.exists():
            return {}, ""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh), str(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _reject_unknown(data: Mapping[str, Any], source: str) -> None:
    sections = _sections()
    for section, body in data.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section [{section}] "
                              f"(known: {', '.join(sections)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        fields = dataclasses.fields(sections[section])
        known = {f.name for f in fields} | {f.metadata["formerly"] for f in fields
                                            if f.metadata.get("formerly")}
        for name in body:
            if name not in known:
                raise ConfigError(f"{source}: unknown key {section}.{name}")


def _renamed(body: Mapping[str, Any], env: Mapping[str, str], section: str, f: Any,
             source: str) -> Mapping[str, Any]:
    """``body`` with a key given under its old name (``key(formerly=)``) under the new
    one; both at once is a ConfigError."""
    old = f.metadata.get("formerly")
    if not old or old not in body:
        return body
    if f.name in body:
        raise ConfigError(f"{source}: {section}.{old} and {section}.{f.name} are the same key "
                          f"(the first is its old name): keep {section}.{f.name}")
    deprecated(source, f"{section}.{old}", f"{section}.{f.name}")
    return {**body, f.name: body[old]}


def _old_env(env: Mapping[str, str], section: str, f: Any) -> str:
    """The environment variable of the key's old name, if set (and deprecated)."""
    old = f.metadata.get("formerly")
    name = f"{ENV_PREFIX}{section.upper()}_{old.upper()}" if old else ""
    if not name or name not in env:
        return ""
    new = f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
    deprecated("environment", f"${name}", f"${new}")
    return name


def load(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build the effective settings.

    Raises :class:`ConfigError` naming the key on any unknown key, wrong type or
    out-of-bounds value; nothing is partially applied.
    """
    env = os.environ if env is None else env
    data, source = _read_file(Path(path) if path is not None else None, env)
    _reject_unknown(data, source)
    sections: dict[str, Any] = {}
    for section, cls in _sections().items():
        values = {}
        for f in dataclasses.fields(cls):
            s = Setting(section, f.name, _type_of(cls, f), f.default, f.metadata["doc"])
            value, where = f.default, f"{section}.{f.name}"
            given = _renamed(data.get(section, {}), env, section, f, source)
            if f.name in given:
                where = f"{source}: {section}.{f.name}"
                value = _convert(given[f.name], s.type, where)
            env_name = s.env if s.env in env else _old_env(env, section, f)
            if env_name:
                where = f"{section}.{f.name} (from ${env_name})"
                value = _convert(env[env_name], s.type, where, from_env=True)
            _check_bounds(value, f.metadata, where)
            values[f.name] = value
        sections[section] = cls(**values)
    return Settings(**sections)
