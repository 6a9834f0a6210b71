"""falconctl.install.fresh_env: HAProxy's environment file never feeds itself; its queue
timeout leaves part of the deadline for the work; and
falconctl.tracing_dropin: the daemon's drop-in for a trace collector off this host."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from falconctl.install import fresh_env, haproxy_env_text, main
from falconctl.tracing_dropin import DROPIN, DropinError, dropin_text, install_dropin
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


def fake_dns(table: dict[str, list[str]]):
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]
    return resolver, asked


def test_no_dropin_when_tracing_is_off_or_the_collector_is_on_loopback():
    resolver, asked = fake_dns({"localhost": ["127.0.0.1", "::1"],
                                "otel-agent": ["127.0.1.1"]})  # Debian's own hostname entry
    for endpoint in ("", "http://127.0.0.1:4318/v1/traces", "http://[::1]:4318/v1/traces",
                     "http://localhost:4318/v1/traces", "http://otel-agent:4318/v1/traces"):
        assert dropin_text(endpoint, resolver) is None, endpoint
    assert asked == [("localhost", 4318), ("otel-agent", 4318)]  # literals are not looked up


def test_a_remote_collector_is_allowed_by_exactly_its_addresses():
    resolver, asked = fake_dns({"otel.example": ["2001:db8::7", "10.0.0.9", "10.0.0.5",
                                                 "10.0.0.9", "fe80::1%eth0", "127.0.0.1"]})
    text = dropin_text("https://otel.example/v1/traces", resolver)
    assert asked == [("otel.example", 443)]
    assert text is not None and text.endswith(
        "\n[Service]\nIPAddressAllow=10.0.0.5 10.0.0.9 2001:db8::7 fe80::1\n")
    comment = " ".join(ln.lstrip("# ") for ln in text.splitlines() if ln.startswith("#"))
    assert "Re-run `falconctl install` after changing tracing.endpoint" in comment
    assert "(https://otel.example/v1/traces)" in text
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert body == ["[Service]", "IPAddressAllow=10.0.0.5 10.0.0.9 2001:db8::7 fe80::1"]
    literal = dropin_text("http://192.0.2.10:4318/v1/traces", resolver)
    assert literal is not None and literal.endswith("\nIPAddressAllow=192.0.2.10\n")


def test_a_name_that_does_not_resolve_is_an_error_naming_the_key():
    resolver, _ = fake_dns({})
    with pytest.raises(DropinError, match=r"tracing\.endpoint .*cannot resolve 'nowhere\.invalid'"):
        dropin_text("http://nowhere.invalid:4318/v1/traces", resolver)
    with pytest.raises(DropinError, match=r"(?i)tracing\.endpoint .*port"):
        dropin_text("http://otel:99999/v1/traces", resolver)


def test_install_writes_refreshes_and_removes_the_dropin(tmp_path: Path):
    etc, units = tmp_path / "etc/falcon", tmp_path / "etc/systemd/system"
    etc.mkdir(parents=True)
    resolver, _ = fake_dns({"otel.example": ["10.0.0.5"], "otel2.example": ["10.0.0.6"]})

    def install(toml: str, env: str = "") -> list[tuple[str, str]]:
        (etc / "falcon.toml").write_text(toml)
        (etc / "falcon.env").write_text(env)
        lines: list[tuple[str, str]] = []
        install_dropin(etc, units, lambda what, status: lines.append((status, what)),
                       resolver)
        return lines

    path = units / DROPIN
    remote = '[tracing]\nendpoint = "http://otel.example:4318/v1/traces"\n'
    assert install(remote) == [("created", str(path))]
    assert path.read_text().endswith("IPAddressAllow=10.0.0.5\n")
    assert path.stat().st_mode & 0o777 == 0o644
    assert install(remote) == [("unchanged", str(path))]
    # falcon.env overrides falcon.toml, as in the units
    assert install(remote, 'FALCON_TRACING_ENDPOINT="http://otel2.example:4318/v1/traces"\n') \
        == [("updated", str(path))]
    assert path.read_text().endswith("IPAddressAllow=10.0.0.6\n")
    (units / "falcon-daemon.service.d/mine.conf").write_text("[Service]\n")  # the operator's
    assert install('[tracing]\nendpoint = "http://127.0.0.1:4318/v1/traces"\n')[0][0] == \
        "removed"
    assert not path.exists() and (units / "falcon-daemon.service.d/mine.conf").exists()
    assert install("")[0][0] == "skipped"
    (units / "falcon-daemon.service.d/mine.conf").unlink()
    install(remote)
    assert install("# tracing off\n")[0][0] == "removed"
    assert not path.parent.exists()  # its directory too, once empty
    with pytest.raises(DropinError, match="tracing.sample_ratio"):
        install('[tracing]\nsample_ratio = 2\n')


@pytest.mark.parametrize("extra, expected", [
    ({"FALCON_EDGE_DEADLINE_MS": "3000"}, "1500ms"),  # default: half the deadline
    ({"FALCON_EDGE_DEADLINE_MS": "3000", "FALCON_HAPROXY_QUEUE_TIMEOUT_MS": "200"}, "200ms"),
])
def test_haproxy_queues_a_request_for_part_of_its_deadline(tmp_path: Path, extra, expected):
    from falconctl.stack import haproxy_env

    (tmp_path / "none.toml").write_text("")
    s = load(env={"FALCON_PATHS_RUN_DIR": str(tmp_path), "FALCON_PATHS_STATE_DIR": str(tmp_path),
                  "FALCON_CONFIG": str(tmp_path / "none.toml"), **extra})
    assert haproxy_env(s)["FALCON_HAPROXY_QUEUE_TIMEOUT"] == expected


def test_a_queue_timeout_that_leaves_no_time_is_refused_naming_the_key(tmp_path: Path):
    from falconctl.stack import haproxy_env
    from settings import ConfigError

    (tmp_path / "none.toml").write_text("")
    s = load(env={"FALCON_PATHS_RUN_DIR": str(tmp_path), "FALCON_PATHS_STATE_DIR": str(tmp_path),
                  "FALCON_CONFIG": str(tmp_path / "none.toml"), "FALCON_EDGE_DEADLINE_MS": "1000",
                  "FALCON_HAPROXY_QUEUE_TIMEOUT_MS": "1000"})
    with pytest.raises(ConfigError, match="haproxy.queue_timeout_ms"):
        haproxy_env(s)
