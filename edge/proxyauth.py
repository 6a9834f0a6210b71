"""HAProxy's headers are believed only from HAProxy (issue 15 item 3).

Usage: ``secret = load_or_create(Path(settings.proxy_secret_file))`` in the
edge and in whatever renders HAProxy's environment (``falconctl.stack.haproxy_env``,
as ``FALCON_HAPROXY_PROXY_SECRET``); the edge installs ``ProxyCheck(secret)`` as a
middleware. HAProxy sets ``X-Falcon-Proxy-Secret`` on every request it forwards
(``set-header`` replaces any copy a client sent).

APPSEC: an edge reached directly (multi-host: ``edge.bind`` on a LAN address)
would otherwise believe ``X-Falcon-Request-Key`` and ``X-Request-Start`` from
anyone: a client could name an existing audit row's key and start time, and its
own prediction's row would be dropped by ``ON CONFLICT DO NOTHING`` (served, not
audited). A request that carries any of :data:`TRUSTED_HEADERS` or the secret
header must carry the right secret, else 403. A request without them (a health
check, a Prometheus scrape, a test) is served as an edge reached directly: it
gets a request key and time of the edge's own making. The secret is compared in
constant time (``hmac.compare_digest``).

The secret file (the prediction cache's key, ``cache.secret_file``, is made the
same way): 43 characters of ``secrets.token_urlsafe(32)``, mode 0600, made
by the first process that needs it (``service.durable.write_atomically`` with
``replace=False``: a whole, fsynced file linked into place, so two starting at once agree). Several hosts behind one HAProxy must share the
front's file (copy it to each host's ``edge.proxy_secret_file``).
"""

from __future__ import annotations

import hmac
import re
import secrets
from pathlib import Path

import falcon

from edge.errors import Forbidden
from service.durable import write_atomically

SECRET_HEADER = "X-Falcon-Proxy-Secret"
# What HAProxy sets and the edge believes (audit key and time, queueing time,
# client address), and the usual spellings of forwarded addresses.
TRUSTED_HEADERS = ("X-Falcon-Request-Key", "X-Request-Start", "X-Forwarded-For",
                   "Forwarded", "X-Real-IP", SECRET_HEADER)
SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


class ProxySecretError(ValueError):
    """The secret file holds something that is not a secret this module wrote
    (edited by hand, truncated): fix or remove it (a new one is then made, to be
    copied to every host again)."""


def load_or_create(path: Path) -> str:
    """The secret in ``path``, made first if there is none. Raises
    :class:`ProxySecretError` for a malformed file, ``OSError`` if it cannot be
    read or made."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = _create(path)
    if not SECRET_RE.match(text):
        raise ProxySecretError(f"{path}: not a secret of ours (43 URL-safe characters); "
                               "remove it to make a new one")
    return text


def _create(path: Path) -> str:
    secret = secrets.token_urlsafe(32)
    try:  # never replaces: a secret made meanwhile wins
        write_atomically(path, secret + "\n", mode=0o600, replace=False)
    except FileExistsError:
        return path.read_text().strip()
    return secret


class ProxyCheck:
    """Falcon middleware: 403 for a request with HAProxy's headers but not its secret."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header(SECRET_HEADER)
        if given is None:
            if any(req.get_header(h) is not None for h in TRUSTED_HEADERS):
                raise Forbidden("HAProxy's headers (X-Falcon-Request-Key, X-Request-Start, "
                                "forwarded addresses) are accepted only from HAProxy")
            return
        if not hmac.compare_digest(given.encode("latin-1", "replace"), self.secret):
            raise Forbidden("wrong X-Falcon-Proxy-Secret")
