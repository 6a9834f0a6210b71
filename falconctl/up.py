"""Defaults for ``falconctl up`` on a developer machine, and its banner."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from settings import Settings

DEV_PATHS = {  # relative to the checkout
    "FALCON_PATHS_RUN_DIR": "var/run",
    "FALCON_PATHS_STATE_DIR": "var/state",
    "FALCON_DAEMON_MODEL_REPOSITORY": "models",
}


def dev_env(root: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` with the embedded defaults filled in where nothing is configured:
    state and socket under ``ROOT/var``, the repository's demo models."""
    out = dict(env)
    if "FALCON_CONFIG" in env:
        return out
    for key, rel in DEV_PATHS.items():
        out.setdefault(key, str(root / rel))
    return out


DEMO_MODELS = ("digits", "iris")  # the demo models shipped in models/, banner order


def example_rows(root: Path, model: str) -> list[Any] | None:
    """The rows of ``models/<model>/example.json`` (the digits one: its first row only,
    64 numbers are enough for one line); None when there is none."""
    path = root / "models" / model / "example.json"
    try:
        rows = list(json.loads(path.read_text())["instances"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rows[:1] if model == "digits" else rows or None


def key_lines(s: Settings, key: str | None) -> tuple[str, list[str]]:
    """The curl line's auth header, and what to say about the key."""
    if not s.auth.enabled:
        return "", ["  API keys:          OFF (auth.enabled = false)"]
    if key is not None:
        return f" -H 'Authorization: Bearer {key}'", [
            "  API key 'demo' (scope predict) created; it is shown only now."]
    cmd = shlex.join([f"FALCON_PATHS_STATE_DIR={s.paths.state_dir}",
                      f"FALCON_PATHS_RUN_DIR={s.paths.run_dir}",
                      str(Path(sys.executable).parent / "falconctl"), "keys", "create",
                      "--name", "me", "--scope", "predict"])
    return " -H \"Authorization: Bearer $FALCON_KEY\"", [
        "  API keys exist already, and are shown only when created. A new one:",
        f"    export FALCON_KEY=$({cmd})"]


def grpc_try(s: Settings, key: str | None) -> str:
    """A ready-to-paste ``tritonclient.grpc`` call of the digits model through HAProxy."""
    auth = ""
    if key:
        auth = f", headers={{'authorization': 'Bearer {key}'}}"
    elif s.auth.enabled:
        auth = ", headers={'authorization': 'Bearer ' + os.environ['FALCON_KEY']}"
    return ("  python3 -c \"import os, numpy as np, tritonclient.grpc as g; "
            f"c = g.InferenceServerClient('{s.grpc.public_bind}'); "
            "i = g.InferInput('input', [1, 64], 'FP32'); "
            "i.set_data_from_numpy(np.zeros((1, 64), np.float32)); "
            f"print(c.infer('digits', [i]{auth}).as_numpy('label'))\"")


def banner(s: Settings, root: Path, key: str | None = None) -> str:
    """``key``: a key created by this run (:func:`falconctl.keys.create_demo_key`)."""
    from falconctl.supervisor import Policy

    policy = Policy()
    url = f"http://{s.haproxy.bind}"
    header, about_key = key_lines(s, key)
    tries = []
    for model in DEMO_MODELS:
        rows = example_rows(root, model) or ([[0.0] * 64] if model == "digits" else None)
        if rows is None:
            continue
        body = json.dumps({"instances": rows}, separators=(",", ":"))
        tries.append(f"  curl -s {url}/v1/models/{model}/predict -H 'Content-Type: "
                     f"application/json'{header} -d '{body}'")
    return "\n".join([
        "",
        f"Falcon inference is up at {url}",
        f"  metrics (HAProxy): http://{s.haproxy.stats_bind}/metrics",
        f"  prediction cache:  memcached {s.cache.servers or 'off'} (per model: [cache] in "
        "config.toml; digits ships it off)",
        f"  OpenAPI:           {url}/openapi.json",
        *about_key,
        "",
        "Try:",
        *tries,
        f"  # gRPC (inference.GRPCInferenceService, h2c at {s.grpc.public_bind}):",
        grpc_try(s, key),
        "",
        f"A component that exits is restarted ({policy.burst} exits within "
        f"{policy.interval:.0f} s stop the stack);",
        f"each one's log is in {Path(s.paths.state_dir) / 'logs'}.",
        "falconctl run in this checkout (models, keys, wal, hosts, config) finds this stack",
        f"through {root / 'var' / 'up.toml'}, written while it runs.",
        "Ctrl-C stops everything.",
        "",
    ])
