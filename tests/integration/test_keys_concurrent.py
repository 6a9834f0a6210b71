"""`falconctl keys create|revoke` at once (issue 15 item 13): each used to write
back what it had read, so one could drop another's new key or undo a revocation.
They take a lock on the keys file's read-modify-write."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from apikeys import load_keys
from tests.stacks import make_repo, stack_env


def falconctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falconctl", "keys", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_concurrent_creates_and_a_revocation_all_stay(tmp_path: Path) -> None:
    env = stack_env(tmp_path, make_repo(tmp_path / "models"))
    keys_file = tmp_path / "state" / "keys.json"
    for i in range(3):
        assert falconctl(env, "create", "--name", f"victim{i}").returncode == 0
    victims = sorted(load_keys(keys_file))
    jobs = [("create", "--name", f"k{i}") for i in range(12)] + \
        [("revoke", v) for v in victims]
    with ThreadPoolExecutor(len(jobs)) as pool:
        outs = list(pool.map(lambda job: falconctl(env, *job), jobs))
    assert [o.returncode for o in outs] == [0] * len(jobs), [o.stderr for o in outs]
    keys = load_keys(keys_file)
    assert sorted(k.name for k in keys.values()) == sorted(
        [f"k{i}" for i in range(12)] + [f"victim{i}" for i in range(3)])
    assert all(keys[v].revoked for v in victims)
