"""Defaults for ``falconctl up`` on a developer machine, and its banner."""

from __future__ import annotations

import json
from pathlib import Path

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


def example_row(root: Path) -> list[float]:
    path = root / "models" / "digits" / "example.json"
    try:
        return list(json.loads(path.read_text())["instances"][0])
    except (OSError, ValueError, KeyError, IndexError):
        return [0.0] * 64


def banner(s: Settings, root: Path) -> str:
    url = f"http://{s.haproxy.bind}"
    body = json.dumps({"instances": [example_row(root)]}, separators=(",", ":"))
    return "\n".join([
        "",
        f"Falcon inference is up at {url}",
        f"  metrics (HAProxy): http://{s.haproxy.stats_bind}/metrics",
        f"  OpenAPI:           {url}/openapi.json",
        "",
        "Try:",
        f"  curl -s {url}/v1/models/digits/predict -H 'Content-Type: application/json' "
        f"-d '{body}'",
        "",
        "Ctrl-C stops everything.",
        "",
    ])
