"""Run the gRPC face (``falconctl grpc``): one process, a grpcio server, a thread pool.

Process model: one process serving ``grpc.threads`` calls at once on grpcio's
synchronous server (its HTTP/2 and protobuf work runs in C outside the GIL; a call's
thread mostly waits on the daemon, and all of them share one multiplexed daemon
connection, so concurrent calls reach the daemon together and batch). More hosts'
worth of gRPC traffic takes more processes behind HAProxy, each on its own bind.

Lifecycle: the server listens on ``grpc.bind`` (h2c), and tells systemd ``READY=1``
once a ``ServerLive`` call to itself is answered. Under a systemd watchdog the main
loop sends ``WATCHDOG=1`` only while such a call is answered (a wedged server is
killed and restarted). SIGTERM or SIGINT only records the signal (docs/conventions.md, 16); the main
loop then reports not-ready (``ServerReady`` false, HAProxy's check header false, so
it takes the process out) for ``edge.drain_s``, stops accepting and lets in-flight
calls finish for up to ``edge.graceful_timeout_s``.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from edge import auth, proxyauth
from edge.app import make_core
from edge.grpcface.proto import grpc_service_pb2 as pb
from edge.grpcface.proto import grpc_service_pb2_grpc as pb_grpc
from edge.grpcface.service import InferenceService
from service.sdnotify import notify, watchdog_interval
from settings import ConfigError, Settings
from telemetry import Tracing

log = logging.getLogger(__name__)


def grpc_options(settings: Settings) -> list[tuple[str, Any]]:
    limit = settings.grpc.max_message_bytes
    return [("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0)]  # a second process on the same bind fails loudly


def build(settings: Settings, stopping: threading.Event,
          tracing: Tracing | None = None) -> tuple[grpc.Server, int]:
    """The server (not started) and the port it is bound to; ``tracing``: the
    process's (the caller starts it), None: off."""
    try:
        secret = proxyauth.load_or_create(Path(settings.proxy_secret_file))
    except (OSError, proxyauth.ProxySecretError) as exc:
        raise ConfigError(f"edge.proxy_secret_file: {exc}") from None
    service = InferenceService(make_core(settings, tracing),
                               authorizer=auth.from_settings(settings),
                               proxy_secret=secret, host_id=settings.host_id,
                               max_elements=settings.edge.max_body_bytes,
                               max_message=settings.grpc.max_message_bytes,
                               ready=lambda: not stopping.is_set())
    server = grpc.server(futures.ThreadPoolExecutor(settings.grpc.threads,
                                                    thread_name_prefix="grpc"),
                         options=grpc_options(settings),
                         maximum_concurrent_rpcs=settings.grpc.threads * 8)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    server.add_generic_rpc_handlers((service.health_handler(),))
    port = server.add_insecure_port(settings.grpc.bind)
    if port == 0:
        raise ConfigError(f"grpc.bind: cannot listen on {settings.grpc.bind}")
    return server, port


def answers(target: str, timeout: float = 2.0) -> bool:
    """Whether the gRPC server at ``target`` answers a ``ServerLive`` call."""
    try:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            return bool(stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout).live)
    except grpc.RpcError:
        return False


def _notify(state: str) -> None:
    try:
        notify(state)
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", state.split("=")[0], exc)


def run(settings: Settings) -> int:
    stopping = threading.Event()
    tracing = Tracing.from_settings(settings, "grpc")
    server, port = build(settings, stopping, tracing)
    tracing.start()  # its span exporter's thread (tracing.endpoint set)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    server.start()
    own = f"127.0.0.1:{port}" if settings.grpc.bind.startswith(("0.0.0.0:", "[::]:")) \
        else settings.grpc.bind
    log.info("gRPC face listening on %s (port %d), %d threads", settings.grpc.bind, port,
             settings.grpc.threads)
    while not stopping.is_set() and not answers(own):
        stopping.wait(0.1)
    _notify("READY=1")
    interval = watchdog_interval()
    while not stopping.wait(interval):  # (None: wait for the signal)
        if answers(own, timeout=interval or 2.0):
            _notify("WATCHDOG=1")
        else:
            log.error("the gRPC server does not answer its own ServerLive call")
    _notify("STOPPING=1")
    log.info("stopping: not ready for %.1f s, then draining", settings.edge.drain_s)
    threading.Event().wait(settings.edge.drain_s)
    server.stop(settings.edge.graceful_timeout_s).wait()
    log.info("stopped")
    return 0
