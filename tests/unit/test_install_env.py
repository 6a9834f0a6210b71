"""falconctl.install.fresh_env: HAProxy's environment file never feeds itself."""

from __future__ import annotations

from pathlib import Path

from falconctl.install import fresh_env, haproxy_env_text, main
from settings import load


def test_values_loaded_from_the_previous_file_are_dropped(tmp_path: Path) -> None:
    old = tmp_path / "haproxy.env"
    old.write_text('# written by ...\nFALCON_HAPROXY_BIND="127.0.0.1:8080"\n'
                   'FALCON_HAPROXY_MAX_BODY_BYTES="1048576"\n')
    env = {"FALCON_HAPROXY_BIND": "127.0.0.1:8080",            # from the old file: dropped
           "FALCON_HAPROXY_MAX_BODY_BYTES": "2097152",         # falcon.env overrides it: kept
           "FALCON_CONFIG": "/etc/falcon/falcon.toml"}
    assert fresh_env(old, env) == {"FALCON_HAPROXY_MAX_BODY_BYTES": "2097152",
                                   "FALCON_CONFIG": "/etc/falcon/falcon.toml"}
    assert fresh_env(tmp_path / "missing.env", env) == env


def test_a_changed_toml_reaches_the_rewritten_file(tmp_path: Path, monkeypatch) -> None:
    toml = tmp_path / "falcon.toml"
    toml.write_text('[haproxy]\nbind = "127.0.0.1:9999"\n[paths]\n'
                    f'run_dir = "{tmp_path}"\nstate_dir = "{tmp_path}"\n')
    out = tmp_path / "haproxy.env"
    stale = haproxy_env_text(load(env={"FALCON_CONFIG": str(toml),
                                       "FALCON_HAPROXY_BIND": "127.0.0.1:8080"}))
    out.write_text(stale)
    for line in stale.splitlines()[1:]:  # what systemd would have loaded from the old file
        key, _, value = line.partition("=")
        monkeypatch.setenv(key, value.strip('"'))
    monkeypatch.setenv("FALCON_CONFIG", str(toml))
    assert main(["haproxy-env", str(out)]) == 0
    assert 'FALCON_HAPROXY_BIND="127.0.0.1:9999"' in out.read_text()
