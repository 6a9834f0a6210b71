"""The installed units, as systemd itself judges them: `systemd-analyze verify`
prints nothing, and `systemd-analyze security --offline=yes` rates each unit
"OK" or better (exposure <= 4.9, i.e. --threshold=49)."""

from __future__ import annotations

import re

import pytest

from falconctl.install import TEMPLATES
from tests.system.systemd_falcon import FALCONCTL, UNITS
from tests.system.systemd_sandbox import Sandbox

UNIT_DIR = "/etc/systemd/system"
OK_THRESHOLD = 49  # exposure x 10: 1.0-4.9 is "OK", below 1.0 "SAFE"


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Sandbox:
    sandbox.run([FALCONCTL, "install"], timeout=120)
    return sandbox


def test_verify_prints_nothing(installed: Sandbox):
    paths = [f"{UNIT_DIR}/{name}" for name in TEMPLATES]
    done = installed.run(["systemd-analyze", "verify", *paths], check=False, timeout=120)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_is_ok_or_better(installed: Sandbox, unit: str):
    done = installed.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                          f"--threshold={OK_THRESHOLD}", f"{UNIT_DIR}/{unit}"],
                         check=False, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", done.stdout)
    assert m, done.stdout + done.stderr
    assert done.returncode == 0 and m.group(2) in ("OK", "SAFE", "PERFECT"), m.group(0)
    assert float(m.group(1)) * 10 <= OK_THRESHOLD


def test_units_run_the_venv_as_the_falcon_users(installed: Sandbox):
    for unit in UNITS:
        text = installed.read(f"{UNIT_DIR}/{unit}")
        user = "falcon-haproxy" if unit == "falcon-haproxy.service" else "falcon"
        assert f"\nUser={user}\n" in text and "\nType=notify\n" in text, unit
        assert "@" not in re.sub(r"SystemCallFilter=.*", "", text), unit  # all filled in
    uids = {installed.run(["id", "-u", u]).stdout.strip() for u in ("falcon", "falcon-haproxy")}
    assert len(uids) == 2 and all(u.isdigit() for u in uids), uids


def test_install_again_on_the_real_root_changes_nothing(installed: Sandbox):
    lines = installed.run([FALCONCTL, "install"], timeout=120).stdout.splitlines()
    assert lines and all(ln.split()[0] in ("unchanged", "kept", "exists", "skipped")
                         for ln in lines), lines
    assert any(ln.startswith("exists") and "user falcon" in ln for ln in lines), lines
