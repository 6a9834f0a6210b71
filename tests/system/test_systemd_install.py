"""`falconctl install --root DIR`: what it writes, that it says what it skipped,
and that a second run changes nothing."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from falconctl.install import TEMPLATES, protect_home, render
from tests.system.systemd_falcon import FALCONCTL, ROOT


def install(root: Path) -> list[str]:
    done = subprocess.run([FALCONCTL, "install", "--root", str(root)], capture_output=True,
                          text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_install_under_a_root_then_again_changes_nothing(tmp_path: Path):
    first = install(tmp_path)
    units = tmp_path / "etc/systemd/system"
    for name in TEMPLATES:
        assert (units / name).is_file()
        assert f"created    {units / name}" in first
    config = tomllib.loads((tmp_path / "etc/falcon/falcon.toml").read_text())
    assert config["paths"] == {"run_dir": "/run/falcon", "state_dir": "/var/lib/falcon"}
    assert config["daemon"]["model_repository"] == "/var/lib/falcon/models"
    assert config["haproxy"]["config"] == "/etc/falcon/haproxy.cfg"
    assert (tmp_path / "etc/falcon/haproxy.cfg").is_file()
    assert (tmp_path / "etc/falcon/falcon.env").stat().st_mode & 0o777 == 0o600
    # the audit DSN is the shipper's alone (issue 15 item 11)
    assert (tmp_path / "etc/falcon/shipper.env").stat().st_mode & 0o777 == 0o600
    assert "FALCON_AUDIT_DSN" in (tmp_path / "etc/falcon/shipper.env").read_text()
    assert "FALCON_AUDIT_DSN" not in (tmp_path / "etc/falcon/falcon.env").read_text()
    readers = [name for name in TEMPLATES
               if "/etc/falcon/shipper.env" in (units / name).read_text()]
    assert readers == ["falcon-shipper.service"], readers
    assert (tmp_path / "var/lib/falcon/models/digits/1/model.onnx").is_file()
    assert any(line.startswith("skipped") and "user falcon" in line for line in first), first

    (tmp_path / "etc/falcon/falcon.toml").write_text("# mine\n")  # the operator's: kept
    second = install(tmp_path)
    assert all(line.split()[0] in ("unchanged", "kept", "skipped") for line in second), second
    assert (tmp_path / "etc/falcon/falcon.toml").read_text() == "# mine\n"


def test_protect_home_binds_what_lives_under_a_home():
    assert protect_home(["/usr", "/opt/falcon/.venv"]) == "ProtectHome=yes"
    assert protect_home(["/root/.pyenv/versions/3.11.7", "/root/.pyenv/versions/3.11.7/lib",
                         "/srv/falcon"]) == \
        "ProtectHome=tmpfs\nBindReadOnlyPaths=/root/.pyenv/versions/3.11.7"


def test_render_refuses_unfilled_placeholders():
    assert render("ExecStart=@VENV@/bin/x\nSystemCallFilter=~@privileged @resources\n",
                  {"VENV": "/v"}) == \
        "ExecStart=/v/bin/x\nSystemCallFilter=~@privileged @resources\n"
    try:
        render("ExecStart=@VENV@/bin/x @OTHER@", {"VENV": "/v"})
    except RuntimeError as exc:
        assert "@OTHER@" in str(exc)
    else:
        raise AssertionError("an unfilled placeholder went through")


def test_the_daemons_tracing_dropin_follows_the_installed_endpoint(tmp_path: Path):
    """A collector off the host: its address allowed in a drop-in; a configuration
    the drop-in cannot be made from fails the command naming the key, after every
    other step ran; tracing off again: the drop-in is removed."""
    install(tmp_path)
    toml, units = tmp_path / "etc/falcon/falcon.toml", tmp_path / "etc/systemd/system"
    dropin = units / "falcon-daemon.service.d/tracing.conf"
    sample = toml.read_text()
    toml.write_text(sample + '\n[tracing]\nendpoint = "http://192.0.2.10:4318/v1/traces"\n')
    assert f"created    {dropin}" in install(tmp_path)
    assert dropin.read_text().endswith("\n[Service]\nIPAddressAllow=192.0.2.10\n")

    toml.write_text(sample + '\n[tracing]\nendpoint = "http://192.0.2.10:4318/v1/traces"\n'
                    'sample_ratio = 2\n')
    done = subprocess.run([FALCONCTL, "install", "--root", str(tmp_path)], capture_output=True,
                          text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1 and "tracing.sample_ratio" in done.stderr, done
    assert f"failed     {dropin}" in done.stdout and dropin.exists()
    assert any(ln.startswith("skipped") and "user falcon" in ln  # the steps after it ran
               for ln in done.stdout.splitlines()), done.stdout

    toml.write_text(sample)
    assert f"removed    {dropin} (tracing off or on loopback)" in install(tmp_path)
    assert not dropin.parent.exists()
