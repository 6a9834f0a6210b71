"""Drive a real systemd booted as PID 1 in new namespaces (``systemd-sandbox.sh``).

:meth:`Sandbox.boot` starts one in a fresh directory and returns once
``systemctl is-system-running`` says running; every command then runs inside
its namespaces with ``nsenter`` (absolute paths only: ``nsenter -m`` resets the
working directory to ``/``) and a bounded timeout; :meth:`Sandbox.poweroff`
powers it off (SIGRTMIN+4, SIGKILL of its PID 1 as the fallback), which ends
every process in it, and removes its directory. Only processes this module
started are ever signalled, by pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "systemd-sandbox.sh"
SYSTEMD = Path("/lib/systemd/systemd")
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "",
       # the checkout (and its venv) stays visible if it lives under /tmp (a CI clone may)
       "SANDBOX_KEEP": str(HERE.parent.parent.resolve()),
       # falconctl run inside imports this checkout, whatever the venv's editable install names
       "PYTHONPATH": str(HERE.parent.parent.resolve())}


class SandboxError(RuntimeError):
    pass


def missing_prerequisites() -> str | None:
    """Why a sandbox cannot boot here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, cgroups)"
    for tool in ("nsenter", "unshare", "script", "setpriv", "systemd-analyze"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is missing (apt-get install systemd)"
    if not any(Path(p).exists() for p in ("/sys/fs/cgroup/cgroup.controllers",
                                          "/sys/fs/cgroup/unified/cgroup.procs")):
        return "no cgroup2 hierarchy"
    return None


def cgroup2_root() -> Path:
    root = Path("/sys/fs/cgroup")
    return root if (root / "cgroup.controllers").exists() else root / "unified"


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


class Sandbox:
    def __init__(self, pid: int, directory: Path) -> None:
        self.pid = pid
        self.dir = directory

    @property
    def cgroup(self) -> Path:
        """The sandbox's cgroup on the host (its cgroup namespace's root)."""
        return cgroup2_root() / f"sysd-{self.dir.name}"

    @classmethod
    def boot(cls, timeout: float = 90.0) -> Sandbox:
        directory = Path(tempfile.mkdtemp(prefix="falcon-sysd-"))
        try:
            done = subprocess.run(["bash", str(SCRIPT), "boot", str(directory)],
                                  capture_output=True, text=True, timeout=timeout, env=ENV)
        except subprocess.TimeoutExpired:
            done = None
        if done is None or done.returncode != 0:
            console = (directory / "console.log")
            tail = console.read_text(errors="replace")[-3000:] if console.exists() else ""
            cls._kill_leftovers(directory)
            shutil.rmtree(directory, ignore_errors=True)
            stderr = done.stderr if done is not None else "timed out"
            raise SandboxError(f"systemd did not boot: {stderr}\n{tail}")
        return cls(int(done.stdout.split()[-1]), directory)

    @staticmethod
    def _kill_leftovers(directory: Path) -> None:
        """A boot that failed half-way: SIGKILL the namespace's init (which ends
        the namespace), then remove the cgroup. Only our cgroup is looked at."""
        cg = cgroup2_root() / f"sysd-{directory.name}"
        if not cg.exists():
            return
        for procs in cg.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                nspid = [ln for ln in status.splitlines() if ln.startswith("NSpid:")]
                if nspid and nspid[0].split()[-1] == "1":
                    os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "populated 1" in (cg / "cgroup.events").read_text():
            time.sleep(0.1)
        for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            d.rmdir()  # a cgroup directory: only removable once empty
        cg.rmdir()

    def poweroff(self) -> None:
        try:
            subprocess.run(["bash", str(SCRIPT), "stop", str(self.pid)], capture_output=True,
                           text=True, timeout=60, env=ENV)
        except subprocess.TimeoutExpired:
            pass
        self._kill_leftovers(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- inside ----------------------------------------------------------------

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        for arg in argv[:1]:
            if not arg.startswith("/") and shutil.which(arg) is None:
                raise SandboxError(f"{arg}: not an absolute path nor on PATH")
        done = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "--", *argv],
                              capture_output=True, text=True, timeout=timeout, input=input,
                              env=ENV, cwd="/")
        if check and done.returncode != 0:
            raise SandboxError(f"{' '.join(argv)} exited {done.returncode}:\n"
                               f"{done.stdout}\n{done.stderr}")
        return done

    def systemctl(self, *args: str, check: bool = True,
                  timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                  "sh", path, mode], input=text)

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def journal(self, unit: str, lines: int = 60) -> str:
        return self.run(["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines),
                         "-u", unit], check=False).stdout

    def unit_pids(self, unit: str) -> list[int]:
        """Pids (as the sandbox sees them, like ``MainPID``) of every process in
        ``unit``'s cgroup; empty when none."""
        done = self.run(["cat", f"/sys/fs/cgroup/system.slice/{unit}/cgroup.procs"], check=False)
        return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []

    def all_pids(self) -> dict[str, list[int]]:
        """Every populated cgroup of the sandbox and its pids (host pids)."""
        out: dict[str, list[int]] = {}
        for procs in self.cgroup.rglob("cgroup.procs"):
            pids = [int(p) for p in procs.read_text().split()]
            if pids:
                out[str(procs.parent.relative_to(self.cgroup))] = pids
        return out
