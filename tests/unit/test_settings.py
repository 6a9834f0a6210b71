"""settings.schema: defaults < TOML file < FALCON_* environment, typed and bounded,
with errors that name the key and where its value came from; and ``falconctl
config``, whose output must be TOML that loads back to the same settings."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from falconctl.cli import main
from settings import SETTINGS, ConfigError, Settings, load
from settings.schema import doc_of


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No FALCON_* variable of the host leaks into a test."""
    for name in list(os.environ):
        if name.startswith("FALCON_"):
            monkeypatch.delenv(name)
    yield


@pytest.fixture
def toml(tmp_path: Path):
    """Write a TOML file and return its path."""
    def write(text: str) -> Path:
        path = tmp_path / "falcon.toml"
        path.write_text(text, encoding="utf-8")
        return path
    return write


def error(path: Path | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, env={} if env is None else env)
    return str(info.value)


def all_keys() -> set[str]:
    """section.key for every field of the settings dataclasses."""
    return {f"{section}.{key}" for section, values in Settings().as_dict().items()
            for key in values}


# --- defaults, file, environment ---------------------------------------------------------

def test_defaults(toml) -> None:
    s = load(toml(""), env={})
    assert s == Settings()
    assert s.edge.workers == 2 and s.edge.bind == "127.0.0.1:8000"
    assert s.daemon.max_frame_bytes == 64 << 20 and s.daemon.keep_segments is False
    assert s.daemon.drain_timeout_s == 10.0
    assert s.daemon_socket == "/run/falcon/daemon.sock"


def test_every_key_is_declared_with_type_default_doc_and_env() -> None:
    assert {f"{s.section}.{s.name}" for s in SETTINGS} == all_keys()
    for s in SETTINGS:
        assert s.type in (str, int, float, bool), s
        assert type(s.default) is s.type, s
        assert s.doc.strip(), s
        assert s.env == f"FALCON_{s.section}_{s.name}".upper()


def test_toml_values(toml) -> None:
    path = toml("""
[paths]
run_dir = "/tmp/falcon run"
[daemon]
inference_threads = 4
drain_timeout_s = 5       # an integer is fine for a float key
keep_segments = true
[edge]
bind = "unix:/tmp/edge.sock"
metadata_ttl_s = 0.5
""")
    s = load(path, env={})
    assert s.paths.run_dir == "/tmp/falcon run"
    assert s.daemon.inference_threads == 4
    assert s.daemon.drain_timeout_s == 5.0 and type(s.daemon.drain_timeout_s) is float
    assert s.daemon.keep_segments is True
    assert s.edge.bind == "unix:/tmp/edge.sock" and s.edge.metadata_ttl_s == 0.5
    assert s.edge.workers == 2  # untouched keys keep their defaults
    assert s.daemon_socket == "/tmp/falcon run/daemon.sock"


def test_explicit_socket_wins_over_run_dir(toml) -> None:
    s = load(toml('[daemon]\nsocket = "/srv/d.sock"\n[paths]\nrun_dir = "/x"\n'), env={})
    assert s.daemon_socket == "/srv/d.sock"


def test_environment_overrides_toml(toml) -> None:
    path = toml("[edge]\nworkers = 4\nthreads = 3\n")
    s = load(path, env={"FALCON_EDGE_WORKERS": "6", "FALCON_DAEMON_DRAIN_TIMEOUT_S": "2.5",
                        "FALCON_HAPROXY_BINARY": "/usr/sbin/haproxy"})
    assert s.edge.workers == 6
    assert s.edge.threads == 3
    assert s.daemon.drain_timeout_s == 2.5
    assert s.haproxy.binary == "/usr/sbin/haproxy"


def test_environment_string_is_taken_verbatim(toml) -> None:
    s = load(toml(""), env={"FALCON_DAEMON_SHM_PREFIX": " spaced name "})
    assert s.daemon.shm_prefix == " spaced name "


@pytest.mark.parametrize("text, value", [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("On", True), (" true ", True),
    ("0", False), ("false", False), ("False", False), ("no", False), ("off", False),
])
def test_boolean_from_environment(toml, text: str, value: bool) -> None:
    s = load(toml(""), env={"FALCON_DAEMON_KEEP_SEGMENTS": text})
    assert s.daemon.keep_segments is value


@pytest.mark.parametrize("text", ["maybe", "", "2", "tru"])
def test_bad_boolean_from_environment(toml, text: str) -> None:
    message = error(toml(""), {"FALCON_DAEMON_KEEP_SEGMENTS": text})
    assert "daemon.keep_segments" in message and "$FALCON_DAEMON_KEEP_SEGMENTS" in message
    assert "boolean" in message and repr(text) in message


# --- wrong types -------------------------------------------------------------------------

@pytest.mark.parametrize("line, key, words", [
    ('[edge]\nworkers = "many"', "edge.workers", ["expected int", "'many'"]),
    ("[edge]\nworkers = 2.5", "edge.workers", ["expected int", "2.5"]),
    ("[edge]\nworkers = true", "edge.workers", ["expected int", "bool"]),
    ("[edge]\nworkers = [2]", "edge.workers", ["expected int", "list"]),
    ('[daemon]\ndrain_timeout_s = "soon"', "daemon.drain_timeout_s", ["expected float"]),
    ("[daemon]\ndrain_timeout_s = false", "daemon.drain_timeout_s", ["expected float"]),
    ("[daemon]\nkeep_segments = 1", "daemon.keep_segments", ["expected bool"]),
    ("[edge]\nbind = 8000", "edge.bind", ["expected str", "8000"]),
])
def test_wrong_type_in_toml_names_key_and_file(toml, line: str, key: str,
                                               words: list[str]) -> None:
    path = toml(line + "\n")
    message = error(path)
    assert str(path) in message and key in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("var, text, key", [
    ("FALCON_EDGE_WORKERS", "many", "edge.workers"),
    ("FALCON_EDGE_WORKERS", "2.5", "edge.workers"),
    ("FALCON_EDGE_WORKERS", "", "edge.workers"),
    ("FALCON_EDGE_METADATA_TTL_S", "2s", "edge.metadata_ttl_s"),
])
def test_wrong_type_in_environment_names_key_and_variable(toml, var: str, text: str,
                                                          key: str) -> None:
    message = error(toml("[edge]\nworkers = 3\n"), {var: text})
    assert key in message and f"${var}" in message and repr(text) in message


# --- bounds ------------------------------------------------------------------------------

@pytest.mark.parametrize("var, text, words", [
    ("FALCON_EDGE_WORKERS", "0", ["0", "below the minimum 1"]),
    ("FALCON_EDGE_WORKERS", "257", ["257", "above the maximum 256"]),
    ("FALCON_DAEMON_MAX_FRAME_BYTES", "1023", ["below the minimum 1024"]),
    ("FALCON_DAEMON_DRAIN_TIMEOUT_S", "600.5", ["above the maximum 600"]),
    ("FALCON_DAEMON_DRAIN_TIMEOUT_S", "-0.1", ["below the minimum 0"]),
    ("FALCON_DAEMON_DRAIN_TIMEOUT_S", "inf", ["not a finite number"]),
])
def test_out_of_bounds_from_environment(toml, var: str, text: str, words: list[str]) -> None:
    message = error(toml(""), {var: text})
    assert f"${var}" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("var, text, attr, value", [
    ("FALCON_EDGE_WORKERS", "1", "workers", 1),
    ("FALCON_EDGE_WORKERS", "256", "workers", 256),
    ("FALCON_EDGE_METADATA_TTL_S", "0", "metadata_ttl_s", 0.0),
])
def test_bounds_are_inclusive(toml, var: str, text: str, attr: str, value: object) -> None:
    assert getattr(load(toml(""), env={var: text}).edge, attr) == value


def test_out_of_bounds_in_toml_names_key_and_file(toml) -> None:
    path = toml("[edge]\nworkers = 0\n")
    message = error(path)
    assert "edge.workers" in message and "below the minimum 1" in message
    assert str(path) in message  # ConfigError promises to name the source


@pytest.mark.parametrize("source", ["toml", "env"])
def test_nan_is_out_of_bounds(toml, source: str) -> None:
    if source == "toml":
        path, env = toml("[daemon]\ndrain_timeout_s = nan\n"), {}
    else:
        path, env = toml(""), {"FALCON_DAEMON_DRAIN_TIMEOUT_S": "nan"}
    with pytest.raises(ConfigError, match="daemon.drain_timeout_s"):
        load(path, env=env)


# --- unknown names, files ----------------------------------------------------------------

def test_unknown_section(toml) -> None:
    path = toml("[edgee]\nworkers = 2\n")
    message = error(path)
    assert "unknown section [edgee]" in message and str(path) in message
    assert "known: " in message and "edge" in message and "daemon" in message


def test_unknown_key(toml) -> None:
    path = toml("[edge]\nworkers = 2\nwrokers = 3\n")
    message = error(path)
    assert "unknown key edge.wrokers" in message and str(path) in message


def test_section_that_is_not_a_table(toml) -> None:
    message = error(toml("edge = 3\n"))
    assert "[edge] must be a table" in message


def test_invalid_toml_names_the_file(toml) -> None:
    path = toml("[edge\nworkers = 2\n")
    assert str(path) in error(path)


def test_missing_explicit_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    message = error(path)
    assert str(path) in message and "does not exist" in message


def test_falcon_config_variable_names_the_file(toml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALCON_CONFIG", str(toml("[edge]\nworkers = 5\n")))
    assert load().edge.workers == 5


def test_falcon_config_pointing_nowhere_is_an_error(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gone.toml"
    monkeypatch.setenv("FALCON_CONFIG", str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load()


def test_explicit_path_wins_over_falcon_config(toml, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALCON_CONFIG", str(tmp_path / "gone.toml"))
    assert load(toml("[edge]\nworkers = 7\n")).edge.workers == 7


def test_falcon_config_is_read_from_the_env_mapping_given(toml) -> None:
    """``env`` is the environment load() sees; FALCON_CONFIG is part of it."""
    path = toml("[edge]\nworkers = 9\n")
    assert load(env={"FALCON_CONFIG": str(path)}).edge.workers == 9


# --- falconctl config ----------------------------------------------------------------------

def run_config(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv, "config"]) == 0
    return capsys.readouterr().out


def test_falconctl_config_prints_toml_that_loads_back(
        toml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FALCON_CONFIG", str(toml(
        '[paths]\nrun_dir = "/tmp/with \\"quotes\\" and \\\\ back"\n'
        "[daemon]\ndrain_timeout_s = 0.1\nmax_frame_bytes = 2147483648\n")))
    monkeypatch.setenv("FALCON_EDGE_WORKERS", "6")
    monkeypatch.setenv("FALCON_DAEMON_KEEP_SEGMENTS", "yes")
    monkeypatch.setenv("FALCON_DAEMON_SHM_PREFIX", "café\ttab")
    printed = tomllib.loads(run_config(capsys))
    assert printed == load().as_dict()
    assert printed["edge"]["workers"] == 6
    assert printed["daemon"]["keep_segments"] is True
    assert printed["daemon"]["shm_prefix"] == "café\ttab"
    assert printed["daemon"]["drain_timeout_s"] == 0.1
    assert printed["daemon"]["max_frame_bytes"] == 1 << 31
    assert printed["paths"]["run_dir"] == '/tmp/with "quotes" and \\ back'
    # and the printed file is itself a valid config giving the same settings
    again = tmp_path / "printed.toml"
    again.write_text(run_config(capsys), encoding="utf-8")
    assert load(again, env={}) == load()


def test_falconctl_config_round_trips_any_unicode_path(
        toml, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FALCON_CONFIG", str(toml("")))
    monkeypatch.setenv("FALCON_PATHS_STATE_DIR", "/srv/falcon-\U0001F985")
    printed = tomllib.loads(run_config(capsys))
    assert printed["paths"]["state_dir"] == "/srv/falcon-\U0001F985"


def test_falconctl_config_with_explicit_file(toml, capsys: pytest.CaptureFixture[str]) -> None:
    path = toml("[haproxy]\nbind = \"0.0.0.0:80\"\n")
    printed = tomllib.loads(run_config(capsys, "--config", str(path)))
    assert printed["haproxy"]["bind"] == "0.0.0.0:80"


def test_falconctl_config_error_exits_2_naming_the_key(
        toml, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FALCON_CONFIG", str(toml("")))
    monkeypatch.setenv("FALCON_EDGE_WORKERS", "lots")
    assert main(["config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "edge.workers" in captured.err and "$FALCON_EDGE_WORKERS" in captured.err


def test_falconctl_config_describe_lists_every_key_with_its_variable(
        toml, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FALCON_CONFIG", str(toml("")))
    assert main(["config", "--describe"]) == 0
    out = capsys.readouterr().out
    lines = out.split("\nPer model, in ")[0].splitlines()  # (the model keys follow: test_tables)
    described = {line.split()[0]: (line, lines[i + 1]) for i, line in enumerate(lines)
                 if line and not line[0].isspace()}
    assert set(described) == all_keys()
    defaults = Settings()
    for key, (head, doc) in described.items():
        section, name = key.split(".")
        assert f"$FALCON_{section.upper()}_{name.upper()}" in head
        value = getattr(getattr(defaults, section), name)
        assert type(value).__name__ in head
        field = next(f for f in dataclasses.fields(getattr(defaults, section)) if f.name == name)
        assert doc.strip() == doc_of(field)  # its description, and its old name if renamed


def test_toml_values_are_typed_not_parsed(toml) -> None:
    """A string in the file is not a number or a boolean (only environment strings are parsed)."""
    message = error(toml('[edge]\nworkers = "4"\n'))
    assert "edge.workers" in message and "expected int" in message
    message = error(toml('[daemon]\nkeep_segments = "yes"\n'))
    assert "daemon.keep_segments" in message and "expected bool" in message


def test_non_finite_value_in_the_file_names_the_file(toml) -> None:
    path = toml("[daemon]\ndrain_timeout_s = nan\n")
    message = error(path)
    assert str(path) in message and "not a finite number" in message


@pytest.mark.parametrize("value", ["bad id", "a/b", "x" * 65, "héte"])
def test_a_host_id_that_cannot_go_into_ids_and_stream_names_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"host\.id .*does not match"):
        load(env={"FALCON_HOST_ID": value})
    assert load(env={"FALCON_HOST_ID": "host-a.rack_2"}).host_id == "host-a.rack_2"
