"""The prediction cache: Memcached through pymemcache, never a reason to fail.

Key: ``falcon:<model>:<version>:<sha256 of the canonical input bytes>`` — the
version is the one that *would* answer, resolved before the lookup, so a new
version (or a rollback) never serves another version's answer. Value: the
daemon's full answer (every output), as msgpack with raw tensor bytes
(:mod:`wire.messages` tensors).

Several servers are spread by pymemcache's ``HashClient`` (rendezvous hashing:
losing one server loses only its share of keys). Any cache failure — down,
slow (``timeout``), a corrupt value — is a miss: logged once per outage,
counted in ``falcon_cache_requests_total{result="error"}``, and behind a
breaker so a dead server costs nothing while it is open.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
from prometheus_client import Counter
from pymemcache.client.hash import HashClient

from edge.breaker import Breaker, Open
from wire import messages

log = logging.getLogger(__name__)

LOOKUPS = Counter("falcon_cache_requests_total", "Prediction cache lookups by result.",
                  ["model", "result"])  # result: hit | miss | error | bypass

Outputs = list[tuple[str, np.ndarray]]


def parse_servers(spec: str) -> list[tuple[str, int]]:
    """``"127.0.0.1:11211,10.0.0.2:11211"`` -> [(host, port), ...]."""
    servers = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"cache server {item!r}: expected host:port")
        servers.append((host.strip("[]"), int(port)))
    return servers


def cache_key(model: str, version: str, digest: str) -> str:
    return f"falcon:{model}:{version}:{digest}"


def encode(outputs: Outputs) -> bytes:
    return msgpack.packb([messages.encode_tensor(n, a) for n, a in outputs], use_bin_type=True)


def decode(value: bytes) -> Outputs:
    return messages.decode_tensors(msgpack.unpackb(value, raw=False), "cached")


class PredictionCache:
    """Thread-safe. ``get`` returns None on a miss *or any failure*; ``set``
    never raises."""

    def __init__(self, servers: list[tuple[str, int]], *, timeout_s: float = 0.05,
                 client_factory: Callable[..., Any] = HashClient,
                 breaker: Breaker | None = None) -> None:
        self.client = client_factory(servers, connect_timeout=timeout_s, timeout=timeout_s,
                                     use_pooling=True, ignore_exc=False, retry_attempts=1,
                                     dead_timeout=1.0)
        self.breaker = breaker or Breaker("memcached", fail_max=3, reset_timeout=2.0)
        self._degraded = False
        self._lock = threading.Lock()

    def get(self, model: str, key: str) -> Outputs | None:
        try:
            value = self.breaker.call(self.client.get, key)
        except Open:
            LOOKUPS.labels(model, "bypass").inc()
            return None
        except Exception as exc:  # pymemcache raises socket, protocol and client errors
            self._failed(model, exc)
            return None
        self._recovered()
        if value is None:
            LOOKUPS.labels(model, "miss").inc()
            return None
        try:
            outputs = decode(value)
        except (ValueError, TypeError, msgpack.ExtraData) as exc:
            self._failed(model, exc)
            return None
        LOOKUPS.labels(model, "hit").inc()
        return outputs

    def set(self, key: str, outputs: Outputs, ttl_s: int) -> None:
        try:
            self.breaker.call(self.client.set, key, encode(outputs), expire=ttl_s, noreply=False)
        except Open:
            pass
        except Exception as exc:  # see get()
            self._failed("", exc, count=False)

    def _failed(self, model: str, exc: BaseException, count: bool = True) -> None:
        if count:
            LOOKUPS.labels(model, "error").inc()
        with self._lock:
            first, self._degraded = not self._degraded, True
        if first:
            log.warning("prediction cache unavailable, serving without it: %s", exc)

    def _recovered(self) -> None:
        if self._degraded:
            with self._lock:
                was, self._degraded = self._degraded, False
            if was:
                log.warning("prediction cache is back")
