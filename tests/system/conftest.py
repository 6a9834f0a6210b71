"""System tests: the falcon-* units under a real systemd (PID 1 in new namespaces).

``sandbox`` (module) boots systemd with every host-touching unit masked (see
``systemd-sandbox.sh``); ``falcon`` (module) runs ``falconctl install`` inside it
-- the real-root path: the ``falcon`` user is added to the sandbox's /etc
overlay, the units land in its /etc/systemd/system, ``systemctl daemon-reload``
runs -- then writes the test's configuration through the installed sample TOML
(free loopback ports, a unique shared-memory prefix, a fresh database in the
session's PostgreSQL, which runs outside the sandbox on loopback) and shortens
the watchdogs with drop-ins. Teardown powers the sandbox off even when a test
failed, and checks that nothing of ours is left in the host's /dev/shm.
"""

from __future__ import annotations

import dataclasses
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.pg import EmbeddedPostgres
from falconctl.stack import free_port
from settings import Settings
from tests.pg_fixture import fresh_database
from tests.system.systemd_falcon import DROPINS, FALCONCTL, ROOT, VENV, Falcon, dump_toml
from tests.system.systemd_sandbox import Sandbox, missing_prerequisites

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    why = missing_prerequisites()
    if why:
        pytest.skip(f"systemd sandbox: {why}")
    box = Sandbox.boot()
    try:
        yield box
    finally:
        box.poweroff()


@pytest.fixture(scope="module")
def falcon(sandbox: Sandbox, pg_cluster: EmbeddedPostgres) -> Iterator[Falcon]:
    sandbox.run([FALCONCTL, "install", "--prefix", str(ROOT), "--venv", str(VENV)],
                timeout=120)
    config = tomllib.loads(sandbox.read("/etc/falcon/falcon.toml"))
    prefix = f"fsys{uuid.uuid4().hex[:10]}"
    edge, public, stats = (f"127.0.0.1:{free_port()}" for _ in range(3))
    dsn = fresh_database(pg_cluster, "systemd")
    config["daemon"]["shm_prefix"] = prefix
    config["edge"].update(bind=edge, workers=2, threads=4, drain_s=0.5)
    config["haproxy"].update(bind=public, stats_bind=stats)
    config["audit"]["dsn"] = dsn
    if "auth" in {f.name for f in dataclasses.fields(Settings)}:
        config.setdefault("auth", {})["enabled"] = False  # these tests are about systemd
    sandbox.write("/etc/falcon/falcon.toml", dump_toml(config))
    for unit, text in DROPINS.items():
        sandbox.write(f"/etc/systemd/system/{unit}.d/test.conf", text)
    sandbox.systemctl("daemon-reload")
    yield Falcon(sandbox, public, edge, prefix, dsn)
    sandbox.systemctl("stop", "falcon.target", check=False)
    host_leftovers = [p.name for p in Path("/dev/shm").glob(prefix + ".*")]
    assert host_leftovers == [], "segments in the host's /dev/shm"
