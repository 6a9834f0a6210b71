"""The daemon process: load the repository, serve, drain on SIGTERM.

Life cycle:

1. scan the model repository and load every version (re-attaching to intact
   shared-memory segments where a previous daemon left them);
2. bind the Unix socket (refusing to steal it from a live daemon), then tell
   systemd ``READY=1`` — only now, when models are loaded and the socket is up;
3. ping the systemd watchdog from the event loop (a hung loop stops pinging);
4. on SIGTERM/SIGINT (the handler only sets an event): ``STOPPING=1``, refuse
   new work, let in-flight requests finish within ``drain_timeout_s``, close
   the sessions and unlink the segments and their directory (unless
   ``keep_segments``), remove the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

import shm
from daemon.lifecycle import Lifecycle
from daemon.registry import Registry
from daemon.repository import RepositoryError, scan
from daemon.server import DaemonServer
from service.sdnotify import notify, watchdog_interval
from settings import Settings
from telemetry import Tracing

log = logging.getLogger("daemon")


class SocketInUse(RuntimeError):
    """Another daemon is listening on the configured socket."""


def prepare_socket_path(path: str) -> None:
    """Remove a stale socket file; refuse if a live daemon answers on it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SocketInUse(f"a daemon is already listening on {path}")


async def serve(settings: Settings, registry: Registry) -> None:
    path = settings.daemon_socket
    lifecycle = Lifecycle(registry, Path(settings.daemon.model_repository))
    tracing = Tracing.from_settings(settings, "daemon")
    server = DaemonServer(registry, lifecycle, max_inflight=settings.daemon.max_inflight,
                          max_frame=settings.daemon.max_frame_bytes,
                          inference_threads=settings.daemon.inference_threads,
                          tracing=tracing if tracing.enabled else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    prepare_socket_path(path)
    await server.start(path)
    tracing.start()  # the span exporter's thread (tracing.endpoint set)
    os.chmod(path, 0o660)
    log.info("serving %d model versions on %s", len(registry), path)
    notify(f"READY=1\nSTATUS=serving {len(registry)} model versions\nMAINPID={os.getpid()}")
    pinger = asyncio.create_task(_watchdog(watchdog_interval()))
    await stop.wait()
    log.info("draining (up to %.1fs)", settings.daemon.drain_timeout_s)
    notify("STOPPING=1\nSTATUS=draining")
    await server.drain(settings.daemon.drain_timeout_s)
    pinger.cancel()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _watchdog(interval: float | None) -> None:
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def run(settings: Settings) -> int:
    try:  # fail fast, before loading anything, if another daemon owns the socket
        prepare_socket_path(settings.daemon_socket)
    except SocketInUse as exc:
        log.error("%s", exc)
        return 1
    for path in shm.sweep_temp(settings.daemon.shm_prefix):
        log.warning("removed %s, left by a publisher that died mid-write", path)
    registry = Registry.from_settings(settings.daemon.shm_prefix, settings.paths.run_dir,
                                      settings.daemon.intra_op_threads)
    broken: dict[str, str] = {}  # one model's bad config.toml never stops the others
    try:
        entries = scan(Path(settings.daemon.model_repository), broken)
    except RepositoryError as exc:
        log.error("%s", exc)
        return 1
    for model, why in sorted(broken.items()):
        log.error("model %s not loaded: %s", model, why)
    registry.load_all(entries)
    if (entries or broken) and not len(registry):
        log.error("no model version could be loaded: %s", registry.failures)
        registry.close(unlink=False)
        return 1
    try:
        asyncio.run(serve(settings, registry))
    except SocketInUse as exc:
        log.error("%s", exc)
        registry.close(unlink=False)
        return 1
    registry.close(unlink=not settings.daemon.keep_segments)
    if not settings.daemon.keep_segments:
        shm.remove_dir(settings.daemon.shm_prefix)  # only if empty
    log.info("stopped")
    return 0
