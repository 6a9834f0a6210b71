"""One host's reconciler for real: a stack started with ``fleet.dsn`` (as
``falconctl up`` does) runs it beside its daemon; ``falconctl hosts`` against
the real PostgreSQL fixture: refusals and exit statuses, a daemon killed and
restarted (it loads its whole repository again: the reconciler unloads what the
fleet does not want), a version missing from the host reported as failing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from falconctl.stack import Stack
from tests.httpx_lite import request
from tests.modelfactory import write_mlp_model
from tests.pg_fixture import fresh_database
from tests.stacks import ROOT


def run(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falconctl", *args], env={**stack.env, **env},
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def loaded(stack: Stack, model: str) -> tuple[list[str], dict[str, int]]:
    out = run(stack, "models", "list")
    assert out.returncode == 0, out.stderr
    [entry] = [m for m in json.loads(out.stdout) if m["name"] == model]
    return entry["versions"], entry["split"]


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def fleet_stack(make_stack: Any, pg_cluster: Any, tmp_path: Path) -> Stack:
    from tests.stacks import make_repo

    repo = make_repo(tmp_path / "repo")
    for version in ("1", "2"):
        write_mlp_model(repo, "mlp", input_dim=8, hidden=16, layers=1, classes=3,
                        seed=int(version), version=version)
    dsn = fresh_database(pg_cluster, "fleet_host")
    return make_stack(repo=repo, FALCON_FLEET_DSN=dsn, FALCON_FLEET_INTERVAL_S="0.5",
                      FALCON_HOST_ID="host-x")


def test_one_host_converges_refuses_and_recovers(fleet_stack: Stack) -> None:
    stack = fleet_stack
    assert stack.procs["reconciler"].alive()  # started with the stack: fleet.dsn is set
    wait_for(lambda: run(stack, "hosts", "status").returncode == 0, 30, "first report")
    assert loaded(stack, "mlp") == (["1", "2"], {})  # version 2 answers everything

    out = run(stack, "hosts", "split", "mlp", "1=100", "--wait", "15")
    assert out.returncode == 0, out.stdout + out.stderr
    assert loaded(stack, "mlp") == (["1", "2"], {"1": 100})

    refused = run(stack, "hosts", "unload", "mlp", "1")
    assert refused.returncode == 1 and "carries 100" in refused.stderr, refused.stderr
    stale = run(stack, "hosts", "split", "mlp", "1=50", "2=50", "--if-revision", "7")
    assert stale.returncode == 3 and "revision 1, not 7" in stale.stderr, stale.stderr
    bad = run(stack, "hosts", "split", "mlp", "4=100")
    assert bad.returncode == 1 and "version 4 is not in the fleet" in bad.stderr, bad.stderr

    out = run(stack, "hosts", "unload", "mlp", "2", "--if-revision", "1", "--wait", "15")
    assert out.returncode == 0, out.stdout + out.stderr
    assert loaded(stack, "mlp") == (["1"], {"1": 100})
    again = run(stack, "hosts", "unload", "mlp", "2")
    assert again.returncode == 0 and "unchanged at revision 2" in again.stdout, again.stdout

    # a daemon killed and started again loads its whole repository: version 2 is back
    # until the reconciler unloads it again
    stack.procs["daemon"].stop(9)
    stack.start_daemon()
    wait_for(lambda: loaded(stack, "mlp") == (["1"], {"1": 100}), 30, "unloaded again")
    wait_for(lambda: run(stack, "hosts", "status").returncode == 0, 30, "converged")

    # a version whose files are not on the host: reported as failing, exit 5 (not converged)
    out = run(stack, "hosts", "load", "mlp", "3", "--wait", "3")
    assert out.returncode == 5 and "not converged" in out.stdout, out.stdout  # written
    status = run(stack, "hosts", "status")
    assert status.returncode == 5 and "FAILING" in status.stdout and "no version '3'" in \
        status.stdout, status.stdout
    out = run(stack, "hosts", "unload", "mlp", "3", "--wait", "15")
    assert out.returncode == 0, out.stdout + out.stderr

    history = run(stack, "hosts", "history", "mlp").stdout.splitlines()
    assert [line.split()[3] for line in history] == ["split", "unload", "load", "unload"]
    assert all("by falconctl:" in line for line in history)
    log = (stack.log_dir / "reconciler.log").read_text()
    assert log.count("no version '3'") == 1, log  # logged once, retried every second
    # the reconciler's metrics are in the host's one scrape (the edge's /metrics)
    scrape = request(stack.settings.edge.bind, "GET", "/metrics").body.decode()
    revision = [line for line in scrape.splitlines() if line.startswith("falcon_fleet_revision")]
    assert revision and revision[0].endswith(" 4.0"), revision
    assert 'falcon_fleet_steps_total{op="unload"}' in scrape
    unset = run(stack, "hosts", "status", FALCON_FLEET_DSN="")
    assert unset.returncode == 2 and "fleet.dsn is empty" in unset.stderr, unset.stderr
