"""falcon-reconciler.service under a real systemd: hardened as it is, it reaches
the daemon's socket and the fleet's PostgreSQL, converges the host to a change,
reports it, and is restarted after a kill -9; its exposure rates "OK" or
better. Its DSN comes from /etc/falcon/reconciler.env, which no other unit reads."""

from __future__ import annotations

import re
import signal
import time

from fleet.store import FleetStore
from tests.system.systemd_falcon import ROOT, Falcon
from tests.system.systemd_sandbox import wait_until

UNIT = "falcon-reconciler.service"
OK_THRESHOLD = 49  # exposure x 10, as tests/system/test_systemd_units.py
DROPIN = f"/etc/systemd/system/{UNIT}.d/test.conf"


def test_the_reconciler_unit_converges_the_host_and_survives_a_kill(falcon: Falcon) -> None:
    box = falcon.box
    readers = box.run(["grep", "-l", "/etc/falcon/reconciler.env", "-r",
                       "/etc/systemd/system"]).stdout.split()
    assert readers == [f"/etc/systemd/system/{UNIT}"], readers
    assert box.run(["stat", "-c", "%a", "/etc/falcon/reconciler.env"]).stdout.strip() == "600"
    box.write("/etc/falcon/reconciler.env",
              f"FALCON_FLEET_DSN={falcon.dsn}\nFALCON_FLEET_INTERVAL_S=1\n", mode="0600")
    # a short watchdog (the unit's is 60 s): only fleet/heartbeat.py's thread feeds it
    box.write(DROPIN, f"[Service]\nEnvironment=PYTHONPATH={ROOT.resolve()}\nWatchdogSec=3s\n")
    box.systemctl("daemon-reload")
    done = box.systemctl("start", "falcon.target", check=False, timeout=150)
    assert done.returncode == 0 and box.show(UNIT, "ActiveState") == "active", \
        done.stderr + box.journal(UNIT)

    store = FleetStore(falcon.dsn)
    try:
        [host] = wait_until(lambda: store.hosts(), 30, "the host's first report")
        assert host.actual["digits"].versions == ("1",), host
        change = store.change("split", "digits", "test", split={"1": 100})
        assert change is not None

        def converged() -> bool:
            [row] = store.hosts()
            return row.converged == change.revision and row.actual["digits"].split == {"1": 100}
        wait_until(converged, 30, "the split applied through the daemon's socket")

        old = int(box.show(UNIT, "MainPID"))
        box.run(["kill", f"-{signal.SIGKILL.value}", str(old)])
        wait_until(lambda: box.show(UNIT, "ActiveState") == "active"
                   and int(box.show(UNIT, "MainPID")) not in (0, old), 30, "restarted")
        store.change("split", "digits", "test", split={"1": 50})  # same routing, new revision
        head = store.desired().revision
        wait_until(lambda: store.hosts()[0].converged == head, 30, "converged after restart")
        # fed while it idles between passes: not killed by its 3 s watchdog
        assert box.show(UNIT, "WatchdogUSec") == "3s"
        pid, restarts = box.show(UNIT, "MainPID"), box.show(UNIT, "NRestarts")
        time.sleep(8)
        assert (box.show(UNIT, "MainPID"), box.show(UNIT, "NRestarts")) == (pid, restarts)
        assert "watchdog timeout" not in box.journal(UNIT, 200).lower()
    finally:
        store.close()
        box.run(["rm", "-f", DROPIN])
        box.systemctl("daemon-reload")
    security = box.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                        f"--threshold={OK_THRESHOLD}", f"/etc/systemd/system/{UNIT}"],
                       check=False, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", security.stdout)
    assert m and security.returncode == 0 and m.group(2) in ("OK", "SAFE", "PERFECT"), \
        security.stdout[-2000:]
