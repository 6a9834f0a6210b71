"""A few lines of HTTP for tests (stdlib only): one request, one answer."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(addr: str, method: str, path: str, body: bytes | str | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0) -> Answer:
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def post_json(addr: str, path: str, doc: Any, headers: dict[str, str] | None = None,
              **kw: Any) -> Answer:
    return request(addr, "POST", path, json.dumps(doc),
                   {"Content-Type": "application/json", **(headers or {})}, **kw)
