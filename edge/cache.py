"""The prediction cache: Memcached through pymemcache, never a reason to fail.

Key: ``falcon:<model>:<content digest>:<sha256 of the canonical input bytes>``
— the content digest (SHA-256 of the segment: graph, weights, model and version,
the same on every host; the daemon's metadata) of the version that *would* answer, resolved before
the lookup, so another version, a rollback, or a version number reloaded from a
replaced file never serves another model's answer (a worker's metadata is at most
``edge.metadata_ttl_s`` old). Value: ``HMAC-SHA256(secret, key + body) || body``,
body the daemon's full answer (every output) as msgpack with raw tensor bytes
(:mod:`wire.messages` tensors).

APPSEC: memcached has no authentication here, so anyone who can reach it could
plant "predictions" that would be served and audited as served. A value whose tag
does not verify (under ``cache.secret_file``, shared by the hosts of one pool) is
a miss, counted as ``result="error"`` and logged.

A pool of servers (several hosts' edges share it) is spread by rendezvous
hashing over *all* configured servers (:func:`rendezvous`: BLAKE2b scores, ~1 µs a
server; pymemcache's ``RendezvousHash`` hashes in pure-Python murmur3, ~14 µs), each
reached through its own thread-safe ``PooledClient`` behind its own breaker.
Losing one server loses exactly its share of keys — they become misses, the
other servers' keys keep hitting, and no key moves, so no server suddenly
takes a dead one's load of misses and fills. When it is back, its breaker's
trial call closes it again: it rejoins without a restart, and every edge
agrees on the key -> server map since it depends on the configured list only.
(pymemcache's ``HashClient`` instead removes a dead node and re-adds it, with
unlocked bookkeeping shared by all threads.)

Any cache failure — down, slow (``timeout``), a corrupt value — is a miss:
logged once per server outage, counted in
``falcon_cache_requests_total{result="error"}``, and behind that server's
breaker (``falcon_breaker_state{breaker="memcached:<host>:<port>"}``) so a dead
server costs nothing while it is open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
from pymemcache.client.base import PooledClient

from edge.breaker import Breaker, Open
from edge.metrics import CACHE_LOOKUPS
from wire import messages

log = logging.getLogger(__name__)

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


def rendezvous(key: str, servers: list[str]) -> str:
    """The server ``key`` lives on: the highest BLAKE2b score of server + key
    (highest random weight hashing: removing a server moves only its own keys).
    Depends only on the set of names, so every edge agrees."""
    if len(servers) == 1:
        return servers[0]
    data = key.encode()
    return max(servers, key=lambda name: hashlib.blake2b(
        data, digest_size=8, key=name.encode()[:64]).digest())


def cache_key(model: str, content_digest: str, digest: str) -> str:
    return f"falcon:{model}:{content_digest}:{digest}"


TAG_BYTES = 32  # HMAC-SHA256


class Forged(ValueError):
    """A cached value whose tag does not verify: planted, or made under another
    ``cache.secret_file`` (hosts of one pool must share it)."""


def encode(outputs: Outputs, secret: bytes, key: str) -> bytes:
    body = msgpack.packb([messages.encode_tensor(n, a) for n, a in outputs], use_bin_type=True)
    return hmac.digest(secret, key.encode() + body, "sha256") + body


def decode(value: bytes, secret: bytes, key: str) -> Outputs:
    tag, body = value[:TAG_BYTES], value[TAG_BYTES:]
    if not hmac.compare_digest(tag, hmac.digest(secret, key.encode() + body, "sha256")):
        raise Forged("tag does not verify")
    return messages.decode_tensors(msgpack.unpackb(body, raw=False), "cached")


class _Server:
    """One memcached server of the pool: its client, breaker and outage flag."""

    def __init__(self, name: str, client: Any, breaker: Breaker) -> None:
        self.name, self.client, self.breaker = name, client, breaker
        self.degraded = False
        self.lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            first, self.degraded = not self.degraded, True
        if first:
            log.warning("prediction cache server %s unavailable, its keys are misses: %s",
                        self.name, exc)

    def recovered(self) -> None:
        if self.degraded:
            with self.lock:
                was, self.degraded = self.degraded, False
            if was:
                log.warning("prediction cache server %s is back", self.name)


class PredictionCache:
    """Thread-safe. ``get`` returns None on a miss *or any failure* (a value
    whose tag does not verify under ``secret`` included); ``set`` never raises.
    ``client_factory(server, **kwargs)`` makes one server's client (a seam for tests)."""

    def __init__(self, servers: list[tuple[str, int]], *, secret: bytes, timeout_s: float = 0.05,
                 client_factory: Callable[..., Any] = PooledClient,
                 fail_max: int = 3, reset_timeout_s: float = 2.0) -> None:
        if not servers:
            raise ValueError("a prediction cache needs at least one server")
        self.secret = secret
        self._warned_unverified = False
        self.servers: dict[str, _Server] = {}
        for host, port in servers:
            name = f"{host}:{port}"
            client = client_factory((host, port), connect_timeout=timeout_s, timeout=timeout_s,
                                    no_delay=True)
            breaker = Breaker(f"memcached:{name}", fail_max=fail_max,
                              reset_timeout=reset_timeout_s)
            self.servers[name] = _Server(name, client, breaker)
        self._names = list(self.servers)

    def server_for(self, key: str) -> _Server:
        return self.servers[rendezvous(key, self._names)]

    def get(self, model: str, key: str) -> Outputs | None:
        server = self.server_for(key)
        try:
            value = server.breaker.call(server.client.get, key)
        except Open:
            CACHE_LOOKUPS.labels(model, "bypass").inc()
            return None
        except Exception as exc:  # pymemcache raises socket, protocol and client errors
            CACHE_LOOKUPS.labels(model, "error").inc()
            server.failed(exc)
            return None
        server.recovered()
        if value is None:
            CACHE_LOOKUPS.labels(model, "miss").inc()
            return None
        try:
            outputs = decode(value, self.secret, key)
        except (ValueError, TypeError, msgpack.ExtraData) as exc:
            CACHE_LOOKUPS.labels(model, "unverified").inc()
            if not self._warned_unverified:  # once per worker: counted in the metric after
                self._warned_unverified = True
                log.warning("prediction cache: a value that does not verify under %s (%s); "
                            "served as a miss. Every edge sharing this memcached needs the same "
                            "cache.secret_file; further ones are counted in "
                            "falcon_cache_requests_total{result=\"unverified\"}", key, exc)
            return None
        CACHE_LOOKUPS.labels(model, "hit").inc()
        return outputs

    def set(self, key: str, outputs: Outputs, ttl_s: int) -> None:
        server = self.server_for(key)
        try:
            server.breaker.call(server.client.set, key, encode(outputs, self.secret, key), expire=ttl_s,
                                noreply=False)
        except Open:
            pass
        except Exception as exc:  # see get()
            server.failed(exc)
