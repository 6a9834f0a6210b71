"""apikeys, edge.auth and falconctl keys without servers: the key format, hashing,
the keys file (atomic, 0600, reloaded when it changes), the authorisation rules (the
transport-free decision, then through a Falcon test client), and the operator's
commands."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import falcon
import falcon.testing
import pytest

import apikeys
from apikeys import ApiKey, Authorizer, KeysFileError, KeyStore, NotPermitted, Unauthenticated
from edge import auth, http_errors, metrics
from edge.errors import Forbidden, Unauthorized
from falconctl import keys as keyscli
from falconctl.cli import main
from falconctl.up import banner
from settings import ConfigError, load

# -- the key format and its hash ----------------------------------------------------------


def test_generated_key_format_and_only_its_hash_is_kept():
    key, entry = apikeys.generate("alice", ["predict", "admin", "predict"], ["digits"])
    assert apikeys.KEY_RE.match(key) and len(key) == 3 + 12 + 1 + 43
    assert apikeys.parse(key) == entry.id and key.startswith(f"fk_{entry.id}_")
    assert entry.scopes == ("predict", "admin") and entry.models == ("digits",)
    assert entry.sha256 == apikeys.digest(key) and len(entry.sha256) == 64
    assert key not in json.dumps(entry.to_doc()) and key[16:] not in json.dumps(entry.to_doc())
    assert entry.matches(key) and not entry.matches(key[:-1] + ("A" if key[-1] != "A" else "B"))
    other, _ = apikeys.generate("alice", ["predict"])
    assert other != key


@pytest.mark.parametrize("text", [
    "", "fk_", "fk_0123456789ab", "fk_0123456789AB_" + "a" * 43, "fk_0123456789ab_" + "a" * 42,
    "fk_0123456789ab_" + "a" * 44, "xk_0123456789ab_" + "a" * 43, "fk_0123456789ab_" + "a" * 42 + "=",
    " fk_0123456789ab_" + "a" * 43,
])
def test_malformed_keys_do_not_parse(text):
    assert apikeys.parse(text) is None


def test_parse_accepts_base64url_secrets():
    assert apikeys.parse("fk_0123456789ab_" + "-_aZ09" * 7 + "x") == "0123456789ab"


@pytest.mark.parametrize("name, scopes, models, cls", [
    ("", ["predict"], [], "default"), ("a b", ["predict"], [], "default"),
    ("a", [], [], "default"), ("a", ["root"], [], "default"),
    ("a", ["predict"], ["../x"], "default"), ("a", ["predict"], [], "hi gh"),
])
def test_generate_refuses_bad_names_scopes_models_classes(name, scopes, models, cls):
    with pytest.raises(ValueError):
        apikeys.generate(name, scopes, models, cls)


# -- the keys file ------------------------------------------------------------------------


def test_keys_file_round_trip_mode_0600_and_no_temp_files(tmp_path):
    path = tmp_path / "state" / "keys.json"
    _, a = apikeys.generate("a", ["predict"], ["digits"], "high")
    _, b = apikeys.generate("b", ["admin"])
    apikeys.save_keys(path, [a, b.revoke()])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["keys.json"]
    loaded = apikeys.load_keys(path)
    assert loaded[a.id] == a and loaded[b.id].revoked and loaded[b.id].revoked_at
    assert json.loads(path.read_text())["keys"][0]["class"] == "high"
    assert apikeys.load_keys(tmp_path / "absent.json") == {}


def test_a_failed_fsync_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    _, a = apikeys.generate("a", ["predict"])
    apikeys.save_keys(path, [a])
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        apikeys.save_keys(path, [a.revoke()])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["keys.json"]


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    ('{"keys": []}', "version"),
    ('{"version": 1, "keys": [{"id": "x"}]}', "keys[0]"),
    ('{"version": 1, "keys": [{"id": "0123456789ab", "name": "a", "sha256": "00", '
     '"scopes": ["predict"]}]}', "malformed id or sha256"),
    ('{"version": 1, "keys": [{"id": "0123456789ab", "name": "a", "sha256": "' + "0" * 64 +
     '", "scopes": ["root"]}]}', "scopes"),
])
def test_malformed_keys_files_are_named(tmp_path, text, words):
    path = tmp_path / "keys.json"
    path.write_text(text)
    with pytest.raises(KeysFileError) as info:
        apikeys.load_keys(path)
    assert str(path) in str(info.value) and words in str(info.value)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_store_reloads_a_changed_file_at_most_every_reload_s(tmp_path):
    path, clock = tmp_path / "keys.json", Clock()
    _, a = apikeys.generate("a", ["predict"])
    apikeys.save_keys(path, [a])
    store = KeyStore(path, reload_s=1.0, clock=clock)
    assert store.get(a.id) == a
    apikeys.save_keys(path, [a.revoke()])  # same id, a new inode
    clock.now += 0.5
    assert not store.get(a.id).revoked  # not checked yet
    clock.now += 0.6
    assert store.get(a.id).revoked
    _, b = apikeys.generate("b", ["predict"])
    apikeys.save_keys(path, [a.revoke(), b])
    clock.now += 1.0
    assert store.get(b.id) == b
    path.unlink()
    clock.now += 1.0
    assert store.get(b.id) is None  # a deleted file means no keys


def test_store_keeps_its_keys_when_the_file_turns_malformed(tmp_path, caplog):
    path, clock = tmp_path / "keys.json", Clock()
    _, a = apikeys.generate("a", ["predict"])
    apikeys.save_keys(path, [a])
    store = KeyStore(path, reload_s=0.0, clock=clock)
    path.write_text("{broken")
    clock.now += 1
    assert store.get(a.id) == a
    assert "keeping the 1 keys" in caplog.text
    with pytest.raises(KeysFileError):
        KeyStore(path)  # at start-up a malformed file is an error


def test_store_refuses_every_key_when_the_file_turns_unreadable(tmp_path, caplog):
    """A changed file the edge cannot read may hold a revocation: the keys read
    before do not stay in force (issue 15 item 13; they did)."""
    path, clock = tmp_path / "keys.json", Clock()
    _, a = apikeys.generate("a", ["predict"])
    apikeys.save_keys(path, [a])
    store = KeyStore(path, reload_s=0.0, clock=clock)
    assert store.get(a.id) == a
    path.rename(tmp_path / "elsewhere.json")
    path.mkdir()  # unreadable as a file whoever we run as (root reads a mode-000 file)
    clock.now += 1
    assert store.get(a.id) is None
    assert "refusing every key" in caplog.text
    path.rmdir()
    (tmp_path / "elsewhere.json").rename(path)
    clock.now += 1
    assert store.get(a.id) == a  # readable again: back in force


def test_store_refuses_every_key_when_the_files_directory_turns_unusable(tmp_path, caplog):
    """stat() itself failing (here ENOTDIR; as another user, a directory made mode 700)
    means no keys until the file can be read again, never an exception on every
    request (found by review: _signature() caught FileNotFoundError only)."""
    folder = tmp_path / "keys"
    folder.mkdir()
    path, clock = folder / "keys.json", Clock()
    _, a = apikeys.generate("a", ["predict"])
    apikeys.save_keys(path, [a])
    store = KeyStore(path, reload_s=0.0, clock=clock)
    assert store.get(a.id) == a
    folder.rename(tmp_path / "moved")
    folder.write_text("not a directory")
    clock.now += 1
    assert store.get(a.id) is None
    folder.unlink()
    (tmp_path / "moved").rename(folder)
    clock.now += 1
    assert store.get(a.id) == a


# -- the authorisation rules --------------------------------------------------------------


@pytest.fixture
def keyring(tmp_path):
    path = tmp_path / "keys.json"
    made = {name: apikeys.generate(name, scopes, models)
            for name, scopes, models in [("pred", ["predict"], []),
                                         ("adm", ["admin"], []),
                                         ("digits_only", ["predict"], ["digits"]),
                                         ("gone", ["predict", "admin"], [])]}
    entries = [e.revoke() if name == "gone" else e for name, (_, e) in made.items()]
    apikeys.save_keys(path, entries)
    return path, {name: key for name, (key, _) in made.items()}


def failures(reason: str) -> float:
    return metrics.AUTH_FAILURES.labels(reason)._value.get()


@pytest.mark.parametrize("who, scope, model, error, reason, words", [
    (None, "predict", None, Unauthorized, "missing", "missing API key"),
    ("junk", "predict", None, Unauthorized, "malformed", "malformed API key"),
    ("forged", "predict", None, Unauthorized, "invalid", "invalid API key"),
    ("unknown", "predict", None, Unauthorized, "invalid", "invalid API key"),
    ("gone", "predict", None, Unauthorized, "revoked", "revoked"),
    ("adm", "predict", "digits", Forbidden, "scope", "lacks the 'predict' scope"),
    ("pred", "admin", None, Forbidden, "scope", "lacks the 'admin' scope"),
    ("digits_only", "predict", "multi_io", Forbidden, "model", "may not use model 'multi_io'"),
])
def test_authorizer_refusals(keyring, who, scope, model, error, reason, words):
    """The decision (apikeys: a refusal with its reason, no HTTP), then the edge's
    adapter (edge.auth.authorize: 401/403 errors, counted by reason)."""
    path, keys = keyring
    credential = {None: None, "junk": "Bearer-ish", "unknown": "fk_000000000000_" + "a" * 43,
                  "forged": keys["pred"][:16] + "b" * 43}.get(who, keys.get(who or ""))
    domain_error = Unauthenticated if error is Unauthorized else NotPermitted
    authorizer = Authorizer(KeyStore(path))
    before = failures(reason)
    with pytest.raises(domain_error) as refused:
        authorizer.check(credential, scope, model)
    assert refused.value.reason == reason and words in str(refused.value)
    assert failures(reason) == before  # the decision counts nothing: the edge does
    with pytest.raises(error) as info:
        auth.authorize(authorizer, credential, scope, model)
    assert str(info.value) == str(refused.value)
    assert failures(reason) == before + 1
    if error is Unauthorized:
        assert info.value.invalid == (reason != "missing")
    if who in ("pred", "adm", "gone", "digits_only", "forged"):
        assert keys[who if who != "forged" else "pred"] not in str(info.value)
        assert refused.value.key_id == apikeys.parse(keys[who if who != "forged" else "pred"])


def test_a_refused_real_key_is_logged_once_a_minute_per_reason(keyring, caplog):
    path, keys = keyring
    clock = Clock()
    authorizer = Authorizer(KeyStore(path), clock=clock)
    for _ in range(3):
        with pytest.raises(NotPermitted):
            authorizer.check(keys["pred"], "admin")
    assert caplog.text.count("refused (scope)") == 1
    clock.now += 60
    with pytest.raises(NotPermitted):
        authorizer.check(keys["pred"], "admin")
    assert caplog.text.count("refused (scope)") == 2
    with pytest.raises(Unauthenticated):
        authorizer.check("fk_000000000000_" + "a" * 43, "predict")  # no real key: no line
    assert "000000000000" not in caplog.text


def test_authorizer_accepts_and_returns_the_entry(keyring):
    path, keys = keyring
    authz = Authorizer(KeyStore(path))
    assert authz.check(keys["pred"], "predict", "multi_io").name == "pred"
    assert authz.check(keys["digits_only"], "predict", "digits").name == "digits_only"
    assert authz.check(keys["adm"], "admin").name == "adm"


class Open:
    scope = None

    def on_get(self, req, resp):
        resp.media = {"open": True}


class Predicting:
    scope = "predict"

    def on_post(self, req, resp, model):
        resp.media = {"key": req.context.api_key_id, "model": model}


class Undeclared:  # says nothing: needs admin
    def on_get(self, req, resp):
        resp.media = {"admin": True}


@pytest.fixture
def client(keyring):
    path, keys = keyring
    app = falcon.App(middleware=[auth.AuthMiddleware(Authorizer(KeyStore(path)))])
    http_errors.install(app)
    app.add_route("/open", Open())
    app.add_route("/m/{model}", Predicting())
    app.add_route("/admin", Undeclared())
    return falcon.testing.TestClient(app), keys


def test_middleware_statuses_headers_and_bodies(client):
    c, keys = client
    assert c.simulate_get("/open").status_code == 200
    ans = c.simulate_post("/m/digits")
    assert ans.status_code == 401 and "missing API key" in ans.json["error"]
    assert ans.headers["www-authenticate"] == 'Bearer realm="falcon"'
    ans = c.simulate_post("/m/digits", headers={"Authorization": "Bearer " + keys["gone"]})
    assert ans.status_code == 401 and ans.headers["www-authenticate"].endswith(
        'error="invalid_token"')
    for headers in ({"Authorization": "Bearer " + keys["pred"]},
                    {"authorization": "bearer  " + keys["pred"]},
                    {"X-API-Key": keys["pred"]}):
        ans = c.simulate_post("/m/digits", headers=headers)
        assert ans.status_code == 200 and ans.json == {"key": apikeys.parse(keys["pred"]),
                                                       "model": "digits"}
    ans = c.simulate_post("/m/multi_io", headers={"X-API-Key": keys["digits_only"]})
    assert ans.status_code == 403 and "multi_io" in ans.json["error"]
    assert c.simulate_get("/admin", headers={"X-API-Key": keys["pred"]}).status_code == 403
    assert c.simulate_get("/admin", headers={"X-API-Key": keys["adm"]}).status_code == 200
    assert c.simulate_get("/nowhere").status_code == 404


def test_auth_disabled_is_said_loudly(tmp_path, caplog):
    s = load(empty_toml(tmp_path), env={"FALCON_AUTH_ENABLED": "false"})
    assert auth.from_settings(s) is None
    assert "AUTH IS DISABLED" in caplog.text


def test_malformed_keys_file_at_start_is_a_config_error(tmp_path):
    (tmp_path / "keys.json").write_text("[]")
    s = load(empty_toml(tmp_path), env={"FALCON_PATHS_STATE_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="auth.keys_file"):
        auth.from_settings(s)


def empty_toml(tmp_path: Path) -> Path:
    path = tmp_path / "falcon.toml"
    path.write_text("")
    return path


# -- falconctl keys -----------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("FALCON_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FALCON_CONFIG", str(empty_toml(tmp_path)))
    monkeypatch.setenv("FALCON_PATHS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FALCON_PATHS_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("FALCON_HAPROXY_KEY_CLASSES", "high=5000")
    return tmp_path


def test_falconctl_keys_create_list_revoke(cli_env, capsys):
    assert main(["keys", "create", "--name", "alice", "--scope", "predict", "--scope", "admin",
                 "--model", "digits", "--class", "high"]) == 0
    key = capsys.readouterr().out.strip()
    key_id = apikeys.parse(key)
    assert key_id is not None
    path = cli_env / "state" / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and key not in path.read_text()
    assert (cli_env / "run" / keyscli.LIMITS_MAP).read_text() == f"{key_id} 5000\n"
    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "alice" in listing and "predict,admin" in listing
    assert "digits" in listing and "high" in listing and key[16:] not in listing
    assert apikeys.load_keys(path)[key_id].sha256 not in listing
    assert main(["keys", "revoke", key_id]) == 0
    assert apikeys.load_keys(path)[key_id].revoked
    assert (cli_env / "run" / keyscli.LIMITS_MAP).read_text() == ""
    assert main(["keys", "revoke", "000000000000"]) == 1
    assert main(["keys", "create", "--name", "bad name"]) == 2


def test_key_classes_are_validated(tmp_path):
    def classes(text: str) -> dict[str, int]:
        return keyscli.key_classes(load(empty_toml(tmp_path),
                                        env={"FALCON_HAPROXY_KEY_CLASSES": text}))
    assert classes("a=1, b=20") == {"a": 1, "b": 20} and classes("") == {}
    for bad in ("a=x", "a", "=3", "a=0"):
        with pytest.raises(ConfigError, match="haproxy.key_classes"):
            classes(bad)


def test_demo_key_once_and_the_banner(cli_env):
    s = load()
    key = keyscli.create_demo_key(s)
    assert key is not None and keyscli.create_demo_key(s) is None
    text = banner(s, cli_env, key)
    assert f"-H 'Authorization: Bearer {key}'" in text
    assert f"headers={{'authorization': 'Bearer {key}'}}" in text  # the tritonclient.grpc call
    later = banner(s, cli_env, None)
    assert "$FALCON_KEY" in later and "keys create" in later and key not in later
    entry = ApiKey.from_doc(json.loads((cli_env / "state" / "keys.json").read_text())["keys"][0],
                            "demo")
    assert entry.name == "demo" and entry.scopes == ("predict",)


def test_falconctl_builds_its_parser_without_importing_prometheus_client():
    """The daemon, edge and shipper enable multiprocess metrics after the parser
    is built; prometheus-client picks its storage when first imported."""
    code = ("import sys, falconctl.cli; falconctl.cli.build_parser(); "
            "sys.exit('prometheus_client' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0



def test_the_keys_domain_imports_neither_falcon_nor_prometheus_client():
    """apikeys is transport-free, and falconctl imports it while building its parser."""
    code = ("import sys, apikeys; "
            "sys.exit(bool({'falcon', 'prometheus_client', 'edge'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
