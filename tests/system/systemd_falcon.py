"""What the system tests share: the installed stack's handle and constants."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.system.systemd_sandbox import Sandbox

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = Path(sys.prefix)
FALCONCTL = str(VENV / "bin" / "falconctl")
UNITS = ("falcon-daemon.service", "falcon-edge.service", "falcon-grpc.service",
         "falcon-shipper.service", "falcon-haproxy.service")
# Short watchdogs keep the hang tests fast; the shipped units use 10 s / 30 s. Every
# unit imports this checkout (PYTHONPATH), whatever the venv's editable install names.
_WATCHDOGS = {"falcon-daemon.service": "WatchdogSec=4s\n", "falcon-edge.service": "WatchdogSec=6s\n"}
DROPINS = {unit: f"[Service]\nEnvironment=PYTHONPATH={ROOT.resolve()}\n{_WATCHDOGS.get(unit, '')}"
           for unit in UNITS}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def dump_toml(data: dict[str, dict[str, Any]]) -> str:
    out = []
    for section, values in data.items():
        out.append(f"[{section}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        out.append("")
    return "\n".join(out)


@dataclass
class Falcon:
    box: Sandbox
    haproxy: str       # host:port of the public frontend
    edge: str
    shm_prefix: str
    dsn: str

    def segments(self) -> list[str]:
        """Shared-memory segments with the test's prefix, in the sandbox's /dev/shm
        (in the daemon's private directory there, /dev/shm/<prefix>.d*/)."""
        names = self.box.run(["find", "/dev/shm", "-mindepth", "2", "-maxdepth", "2",
                              "-name", self.shm_prefix + ".*", "-printf", "%f\\n"]).stdout.split()
        return [n for n in names if n.startswith(self.shm_prefix + ".")]
