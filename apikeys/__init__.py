"""API keys, transport-free: the key format, the keys file, the reloading store and
the authorisation decision. No HTTP in here: the edge's Falcon middleware and gRPC
face (``edge/auth.py``) and ``falconctl keys`` (``falconctl/keys.py``) both use it.

Usage::

    from apikeys import PREDICT, Authorizer, KeyStore, Refused, add_key, revoke_key

    key, entry = add_key(path, "alice", [PREDICT])   # show ``key`` once; only its hash is kept
    authorizer = Authorizer(KeyStore(path, reload_s=1.0))
    try:
        entry = authorizer.check(credential, PREDICT, model="digits")
    except Refused as exc:      # Unauthenticated or NotPermitted, with exc.reason
        ...
    revoke_key(path, entry.id)  # every KeyStore drops it within reload_s

Modules: ``key`` (the format, an entry, generation, hashing), ``keyfile`` (the file
and its locked read-modify-write), ``store`` (one process's reloading view),
``authorizer`` (the decision), ``errors``. Imports no other package of the project
but ``service`` (durable writes), and not prometheus-client: ``falconctl`` imports it
while building its parser, before the processes it starts enable multiprocess
metrics; the refusals are counted by the edge (``edge/metrics.py``).
"""

from apikeys.authorizer import Authorizer
from apikeys.errors import ApiKeyError, KeysFileError, NotPermitted, Refused, Unauthenticated
from apikeys.key import (
    ADMIN,
    DEFAULT_CLASS,
    KEY_RE,
    NAME_RE,
    PREDICT,
    SCOPES,
    ApiKey,
    digest,
    generate,
    parse,
)
from apikeys.keyfile import FILE_VERSION, add_key, load_keys, locked, revoke_key, save_keys
from apikeys.store import KeyStore

__all__ = [
    "ADMIN", "DEFAULT_CLASS", "FILE_VERSION", "KEY_RE", "NAME_RE", "PREDICT", "SCOPES",
    "ApiKey", "ApiKeyError", "Authorizer", "KeyStore", "KeysFileError", "NotPermitted",
    "Refused", "Unauthenticated", "add_key", "digest", "generate", "load_keys", "locked",
    "parse", "revoke_key", "save_keys",
]
