"""Build the Falcon application: routes, error handlers, the core."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon

from audit.wal import WalWriter
from edge import (
    admin,
    auth,
    http_errors,
    kservev1,
    metrics,
    modelconfig,
    openapi,
    proxyauth,
    resources,
    stats,
    tracing,
)
from edge.audit import Auditor
from edge.breaker import Breaker
from edge.cache import PredictionCache, parse_servers
from edge.core import Core
from edge.daemon_client import DaemonClient
from edge.errors import Unavailable
from settings import ConfigError, Settings
from telemetry import Tracing

log = logging.getLogger(__name__)

ROUTES: list[tuple[str, type[resources.Resource]]] = [
    ("/v2/health/live", resources.Live),
    ("/v2/health/ready", resources.Ready),
    ("/v2", resources.ServerMetadata),
    ("/v2/models/{model}", resources.ModelMetadata),
    ("/v2/models/{model}/versions/{version}", resources.ModelMetadata),
    ("/v2/models/{model}/ready", resources.ModelReady),
    ("/v2/models/{model}/versions/{version}/ready", resources.ModelReady),
    ("/v2/models/{model}/infer", resources.Infer),
    ("/v2/models/{model}/versions/{version}/infer", resources.Infer),
    ("/v1/models/{model}/predict", resources.Predict),
    ("/v1/models/{model}/versions/{version}/predict", resources.Predict),
]


# Routes of the app's own, outside the resource tables, that never need a key
# (resources.Resource subclasses declare their `scope`).
SERVICE_ROUTES: list[tuple[str, type]] = [("/openapi.json", openapi.OpenAPI),
                                          ("/metrics", metrics.Metrics)]
OPEN_RESOURCES = tuple(cls for _, cls in SERVICE_ROUTES)


def create_app(core: Core, *, max_body: int, authorizer: auth.Authorizer | None = None,
               host_id: str = "edge", proxy_secret: str | None = None) -> falcon.App:
    middleware: list[Any] = []
    if core.tracing.enabled:  # first: its span sees auth refusals, and ends last
        middleware.append(tracing.TraceMiddleware(core.tracing))
    middleware.append(metrics.RequestMetrics())
    if proxy_secret is not None:
        middleware.append(proxyauth.ProxyCheck(proxy_secret))
    if authorizer is not None:
        middleware.append(auth.AuthMiddleware(authorizer, OPEN_RESOURCES))
    app = falcon.App(media_type=falcon.MEDIA_JSON, middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    http_errors.install(app)
    routes = ROUTES + admin.ROUTES + stats.ROUTES
    routes += modelconfig.ROUTES
    routes += kservev1.ROUTES
    for path, cls in routes:
        app.add_route(path, cls(core, max_body, host_id))
    app.add_route("/openapi.json", openapi.OpenAPI(routes + SERVICE_ROUTES))
    app.add_route("/metrics", metrics.Metrics())
    return app


def make_auditor(settings: Settings) -> Auditor | None:
    a = settings.audit
    if not a.enabled:
        log.warning("AUDIT IS OFF (audit.enabled = false): predictions are served unrecorded")
        return None

    def writer(wal_dir: Path, stream: str) -> WalWriter:
        return WalWriter(wal_dir, stream, sync=a.sync, interval_ms=a.interval_ms,
                         segment_bytes=a.segment_bytes, min_free_bytes=a.min_free_bytes,
                         fsync=cooperative(os.fdatasync), before_sync=greenlet_yield())
    return Auditor(Path(settings.wal_dir), settings.host_id, writer,
                   max_input_bytes=a.max_input_bytes, retry_s=a.retry_s)


def _gevent() -> Any:
    """The ``gevent`` module when this process runs under it (the edge's gevent worker
    monkey-patches ``threading``), else None."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return None
    if not monkey.is_module_patched("threading"):
        return None
    import gevent

    return gevent


def cooperative(blocking: Callable[[int], None]) -> Callable[[int], None]:
    """``blocking`` as it should run in this process. Under gevent (the edge's worker
    class by default) a call that blocks in the kernel, like ``fdatasync``, stops every
    greenlet of the worker, so it runs in gevent's thread pool and only the caller
    waits (PERF: an fsync covers a group of records, so one thread hand-off per group);
    otherwise it is called as it is."""
    gevent = _gevent()
    if gevent is None:
        return blocking

    def in_pool(fd: int) -> None:
        gevent.get_hub().threadpool.apply(blocking, (fd,))
    return in_pool


def greenlet_yield() -> Callable[[], None] | None:
    """Under gevent, a yield to the greenlets that are runnable now (None otherwise):
    the WAL's group-commit leader calls it before its fsync, so the other answers of
    the same daemon batch, woken together, append first and share that fsync."""
    gevent = _gevent()
    return None if gevent is None else lambda: gevent.sleep(0)


def make_cache(settings: Settings) -> PredictionCache | None:
    try:
        servers = parse_servers(settings.cache.servers)
    except ValueError as exc:
        raise ConfigError(f"cache.servers: {exc}") from None
    if not servers:
        return None
    try:
        secret = proxyauth.load_or_create(Path(settings.cache_secret_file))
    except (OSError, proxyauth.ProxySecretError) as exc:
        raise ConfigError(f"cache.secret_file: {exc}") from None
    return PredictionCache(servers, secret=secret.encode(),
                           timeout_s=settings.cache.timeout_ms / 1000.0)


def make_core(settings: Settings, tracing: Tracing | None = None) -> Core:
    """The core every face shares (REST here, gRPC in ``edge.grpcface.server``);
    ``tracing``: the process's (started after the fork by its server), None: off."""
    client = DaemonClient(settings.daemon_socket, max_frame=settings.daemon.max_frame_bytes)
    breaker = Breaker("daemon", fail_max=settings.edge.breaker_fail_max,
                      reset_timeout=settings.edge.breaker_reset_s, count=(Unavailable,))
    return Core(client, auditor=make_auditor(settings), cache=make_cache(settings),
                breaker=breaker, deadline_ms=settings.edge.deadline_ms,
                max_rows=settings.edge.max_request_rows,
                metadata_ttl_s=settings.edge.metadata_ttl_s, tracing=tracing)


def from_settings(settings: Settings, tracing: Tracing | None = None) -> falcon.App:
    core = make_core(settings, tracing)
    try:
        secret = proxyauth.load_or_create(Path(settings.proxy_secret_file))
    except (OSError, proxyauth.ProxySecretError) as exc:
        raise ConfigError(f"edge.proxy_secret_file: {exc}") from None
    return create_app(core, max_body=settings.edge.max_body_bytes,
                      authorizer=auth.from_settings(settings), host_id=settings.host_id,
                      proxy_secret=secret)
