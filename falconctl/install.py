"""``falconctl install``: put one host's systemd units, configuration and HAProxy
config in place.

    falconctl install [--root DIR] [--prefix CHECKOUT] [--venv VENV] [--haproxy PATH]

Under ``ROOT`` (default ``/``) it writes:

- ``etc/systemd/system/falcon.target`` and
  ``falcon-{daemon,edge,grpc,shipper,haproxy,reconciler}.service``,
  rendered from the templates in ``<prefix>/ops/systemd/``. They are generated
  files: rewritten on every run (customise them with drop-ins,
  ``systemctl edit falcon-edge``). Placeholders: ``@VENV@`` (the virtualenv whose
  ``bin/falconctl`` the units run), ``@PREFIX@`` (the project checkout),
  ``@HAPROXY@`` (the haproxy binary) and ``@PROTECT_HOME@`` (``ProtectHome=yes``,
  or ``ProtectHome=tmpfs`` plus ``BindReadOnlyPaths=`` when the interpreter, the
  venv or the checkout live under ``/home``, ``/root`` or ``/run/user`` -- a
  pyenv Python in ``/root/.pyenv``, say -- so that hardening does not hide them);
- ``etc/systemd/system/falcon-daemon.service.d/tracing.conf``: ``IPAddressAllow=``
  of the trace collector's addresses when ``tracing.endpoint`` (the installed
  ``falcon.toml`` and ``falcon.env``) names a host off this one, resolved now;
  removed when tracing is off or on loopback (``falconctl/tracing_dropin.py``:
  re-run the install after changing the endpoint);
- ``etc/falcon/haproxy.cfg``: the project's ``ops/haproxy/haproxy.cfg``,
  rewritten on every run too (it must match the environment ``falconctl`` gives
  HAProxy, which changes with the code; a customised copy goes elsewhere, named
  by ``haproxy.config``);
- ``etc/falcon/falcon.toml``, ``etc/falcon/falcon.env`` (every unit's),
  ``etc/falcon/shipper.env`` (the shipper's alone: the audit DSN and its password)
  and ``etc/falcon/reconciler.env`` (the reconciler's alone: the fleet DSN), the
  ``.env`` files mode 0600, only when absent: they are the operator's to edit (a kept file
  that differs from the project's sample is reported);
- ``var/lib/falcon/models``: the project's demo model repository, when that
  directory is empty or absent.

Only when installing to the real root (no ``--root``) does it also create the
system users and groups ``falcon`` and ``falcon-haproxy`` (``useradd --system``)
when missing, hand the state directory to ``falcon``, make what the edge may no
longer make itself (it is read-only on the state directory but for its WAL): the
WAL directory ``var/lib/falcon/wal`` and the proxy and cache secrets
(``proxy.secret``, ``cache.secret``, 0600), and run ``systemctl daemon-reload``
(if systemd runs). With ``--root`` those steps are skipped, and the report says
so. Running it twice changes nothing the second time (every line of the report
says ``unchanged``, ``kept`` or ``exists``).

Who runs as whom (issue 15 item 11): the daemon, the edge, the gRPC face and
the shipper as ``falcon`` (the edge writes the WAL the shipper reads and deletes;
they share ``/run/falcon``), with the edge and the gRPC face read-only on
``/var/lib/falcon`` but for its ``wal``; HAProxy as ``falcon-haproxy``, which can
reach none of it: its runtime directory is ``/run/falcon-haproxy``, and the proxy
secret reaches it in the environment its start step writes as ``falcon``
(``setpriv``). Why static users rather than ``DynamicUser=``: ``DynamicUser=``
implies ``RemoveIPC=yes``, which deletes the daemon's shared-memory segments when
it stops: a restarted daemon could then never re-attach to its weights. A dynamic
UID may also change between starts, forcing a recursive chown of the WAL and
models every time.

``python -m falconctl.install haproxy-env PATH`` is the ``ExecStartPre=`` of
``falcon-haproxy.service``: it writes the environment ``haproxy.cfg`` expands
(:func:`falconctl.stack.haproxy_env`), from the current ``falcon.toml``.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import settings as settings_mod
from falconctl.tracing_dropin import DROPIN, DropinError, install_dropin
from service.durable import write_atomically
from settings import ConfigError, Settings

PROJECT = Path(__file__).resolve().parent.parent
TEMPLATES = ("falcon.target", "falcon-daemon.service", "falcon-edge.service",
             "falcon-grpc.service", "falcon-shipper.service", "falcon-haproxy.service",
             "falcon-reconciler.service")
USER = "falcon"
HAPROXY_USER = "falcon-haproxy"
STATE_DIR = "/var/lib/falcon"
# What the edge, read-only on STATE_DIR, needs made for it (settings' defaults)
STATE_SUBDIRS = ("wal",)
STATE_SECRETS = ("proxy.secret", "cache.secret")
HOME_DIRS = ("/home", "/root", "/run/user")
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
HAPROXY_HEADER = """\
# Installed by `falconctl install` from {src}; every install rewrites it, so that it
# matches the environment falconctl gives HAProxy (falconctl.stack.haproxy_env).
# To customise: copy it elsewhere and point haproxy.config in /etc/falcon/falcon.toml at it.
"""


class InstallError(RuntimeError):
    """Something the installer cannot do; the message says what and why."""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # steps that failed; the rest went on

    def add(self, what: str, status: str) -> None:
        self.lines.append(f"{status:<10} {what}")


# -- rendering ---------------------------------------------------------------


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace each ``@NAME@`` of ``values``; refuse to leave one unfilled."""
    out = template
    for name, value in values.items():
        out = out.replace(f"@{name}@", value)
    left = _PLACEHOLDER.findall(out)
    if left:
        raise InstallError(f"template placeholders without a value: {', '.join(sorted(set(left)))}")
    return out


def _under_home(path: str) -> bool:
    return any(path == h or path.startswith(h + "/") for h in HOME_DIRS)


def interpreter_paths(venv: Path) -> list[str]:
    """What the units' processes must be able to read: the venv, its base
    interpreter's installation (resolved through symlinks) and the directory
    holding the ``falconctl`` package (the checkout, for an editable install)."""
    python = venv / "bin" / "python"
    code = ("import os, sys, falconctl\n"
            "print(os.path.realpath(sys.prefix))\n"
            "print(os.path.realpath(sys.base_prefix))\n"
            "print(os.path.dirname(os.path.dirname(os.path.realpath(falconctl.__file__))))\n")
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                             timeout=60, check=True, cwd="/").stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallError(f"{python} cannot import falconctl (is --venv the project's "
                           f"virtualenv?): {exc}") from None
    return [line for line in out.splitlines() if line]


def protect_home(paths: Sequence[str]) -> str:
    """``ProtectHome=yes``; or ``tmpfs`` plus read-only binds of the needed
    paths under a home directory (``yes`` would hide them: the units could not
    even start their interpreter)."""
    needed: list[str] = []
    hidden = [p for p in paths if _under_home(p) or _under_tmp(p)]
    for path in sorted(set(p.rstrip("/") or "/" for p in hidden)):
        if not any(path.startswith(n + "/") for n in needed):
            needed.append(path)
    if not needed:
        return "ProtectHome=yes"
    protect = "ProtectHome=tmpfs" if any(_under_home(p) for p in needed) else "ProtectHome=yes"
    # NOTE: a checkout under /tmp (a CI clone) is hidden by PrivateTmp=yes too: bind it back
    return f"{protect}\nBindReadOnlyPaths=" + " ".join(needed)


def _under_tmp(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in ("/tmp", "/var/tmp"))


def _check_path(what: str, path: str) -> None:
    if not os.path.isabs(path) or re.search(r"[\s\\\"'%$]", path):
        raise InstallError(f"{what} {path!r}: must be an absolute path without blanks, "
                           "quotes, '\\', '%' or '$' (it goes into unit files)")


def unit_values(prefix: Path, venv: Path, haproxy: str) -> dict[str, str]:
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    for what, path in (("--prefix", str(prefix)), ("--venv", str(venv)),
                       ("--haproxy", haproxy), ("setpriv", setpriv)):
        _check_path(what, path)
    if not os.access(venv / "bin" / "falconctl", os.X_OK):
        raise InstallError(f"{venv}/bin/falconctl is missing: is {venv} the project's venv?")
    paths = interpreter_paths(venv) + [str(prefix)]
    for path in paths:
        _check_path("path", path)
    return {"VENV": str(venv), "PREFIX": str(prefix), "HAPROXY": haproxy,
            "SETPRIV": setpriv, "PROTECT_HOME": protect_home(paths)}


# -- writing files ------------------------------------------------------------


def write_generated(path: Path, text: str, report: Report, mode: int = 0o644) -> None:
    """A file we own: rewritten when its content changed."""
    try:
        same = path.read_text() == text and (path.stat().st_mode & 0o7777) == mode
    except FileNotFoundError:
        write_atomically(path, text, mode=mode)
        report.add(str(path), "created")
        return
    if same:
        report.add(str(path), "unchanged")
    else:
        write_atomically(path, text, mode=mode)
        report.add(str(path), "updated")


def write_config(path: Path, text: str, report: Report, mode: int = 0o644) -> None:
    """A file the operator owns: written only when absent."""
    if path.exists():
        differs = path.read_text(errors="replace") != text
        report.add(f"{path}" + (" (differs from the project's default)" if differs else ""),
                   "kept")
        return
    write_atomically(path, text, mode=mode)
    report.add(str(path), "created")


def install_models(src: Path, dst: Path, report: Report) -> bool:
    """Copy the demo repository (``<prefix>/models``) unless ``dst`` has content."""
    if dst.is_dir() and any(dst.iterdir()):
        report.add(f"{dst} (not empty)", "kept")
        return False
    models = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not models:
        raise InstallError(f"no model in {src}")
    dst.mkdir(parents=True, exist_ok=True)
    for model in models:
        shutil.copytree(model, dst / model.name,
                        ignore=shutil.ignore_patterns("*.py", "__pycache__", "example.json"))
    report.add(f"{dst} ({', '.join(m.name for m in models)})", "created")
    return True


# -- the real root only -------------------------------------------------------


def ensure_user(report: Report, name: str = USER, home: str = STATE_DIR,
                comment: str = "Falcon inference") -> None:
    try:
        pwd.getpwnam(name)
        report.add(f"user {name}", "exists")
        return
    except KeyError:
        pass
    try:
        grp.getgrnam(name)
        group = ["--gid", name]
    except KeyError:
        group = ["--user-group"]
    cmd = ["useradd", "--system", *group, "--home-dir", home, "--no-create-home",
           "--shell", "/usr/sbin/nologin", "--comment", comment, name]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise InstallError(f"{' '.join(cmd)} failed: {detail}") from None
    report.add(f"user {name} (useradd --system)", "created")


def ensure_state(state: Path, report: Report, name: str = USER) -> None:
    """The directories and secrets of :data:`STATE_SUBDIRS` and :data:`STATE_SECRETS`
    under ``state``, the service user's, when missing (never replaced)."""
    from edge.proxyauth import load_or_create

    uid, gid = pwd.getpwnam(name).pw_uid, grp.getgrnam(name).gr_gid
    for sub in STATE_SUBDIRS:
        path = state / sub
        if path.is_dir():
            report.add(str(path), "exists")
            continue
        path.mkdir(mode=0o750, parents=True)
        os.chown(path, uid, gid)
        report.add(f"{path} ({name}, 0750)", "created")
    for secret in STATE_SECRETS:
        path = state / secret
        if path.exists():
            report.add(str(path), "exists")
            continue
        load_or_create(path)  # 0600; then the service user's
        os.chown(path, uid, gid)
        report.add(f"{path} ({name}, 0600)", "created")


def chown_tree(path: Path, name: str = USER) -> None:
    uid, gid = pwd.getpwnam(name).pw_uid, grp.getgrnam(name).gr_gid
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for entry in dirnames + filenames:
            os.lchown(os.path.join(dirpath, entry), uid, gid)


def daemon_reload(report: Report) -> None:
    if not os.path.isdir("/run/systemd/system"):
        report.add("systemctl daemon-reload (systemd is not running here)", "skipped")
        return
    done = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise InstallError(f"systemctl daemon-reload failed: {done.stderr.strip()}")
    report.add("systemctl daemon-reload", "ran")


# -- the command ----------------------------------------------------------------


def install(root: Path, prefix: Path, venv: Path, haproxy: str) -> Report:
    real_root = root.resolve() == Path("/")
    report = Report()
    values = unit_values(prefix, venv, haproxy)
    unit_dir = root / "etc/systemd/system"
    for name in TEMPLATES:
        template = (prefix / "ops/systemd" / name).read_text()
        write_generated(unit_dir / name, render(template, values), report)
    etc = root / "etc/falcon"
    write_config(etc / "falcon.toml", (prefix / "ops/systemd/falcon.toml").read_text(), report)
    write_config(etc / "falcon.env", (prefix / "ops/systemd/falcon.env").read_text(), report,
                 mode=0o600)
    for env_file in ("shipper.env", "reconciler.env"):  # each one unit's secrets
        write_config(etc / env_file, (prefix / "ops/systemd" / env_file).read_text(), report,
                     mode=0o600)
    write_generated(etc / "haproxy.cfg", HAPROXY_HEADER.format(src=prefix / "ops/haproxy/haproxy.cfg")
                    + (prefix / "ops/haproxy/haproxy.cfg").read_text(), report)
    try:  # the daemon's way to a collector off this host (falconctl/tracing_dropin.py)
        install_dropin(etc, unit_dir, report.add)
    except DropinError as exc:  # the other steps still run (daemon-reload included)
        report.add(f"{unit_dir / DROPIN} (left as it was: {exc})", "failed")
        report.errors.append(str(exc))
    state = root / STATE_DIR.lstrip("/")
    copied = install_models(prefix / "models", state / "models", report)
    if not real_root:
        report.add(f"user {USER}, user {HAPROXY_USER}, ownership of {state}, its wal and "
                   f"secrets, systemctl daemon-reload (--root {root}: do them on the target "
                   "system)", "skipped")
        return report
    ensure_user(report)
    ensure_user(report, HAPROXY_USER, "/nonexistent", "Falcon HAProxy")
    if copied:
        chown_tree(state)
        report.add(f"{state} owned by {USER}:{USER}", "changed")
    ensure_state(state, report)
    units_changed = any(line.startswith(("created", "updated", "removed"))
                        and str(unit_dir) in line
                        for line in report.lines)
    if units_changed:
        daemon_reload(report)
    else:
        report.add("systemctl daemon-reload (no unit changed)", "skipped")
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="/",
                   help="install under this directory instead of / (an image, a test): "
                        "no user is created and systemd is not reloaded")
    p.add_argument("--prefix", default=str(PROJECT),
                   help="the project checkout whose ops/ and models/ are installed "
                        "(default: %(default)s)")
    p.add_argument("--venv", default=sys.prefix,
                   help="the virtualenv whose bin/falconctl the units run (default: %(default)s)")
    p.add_argument("--haproxy", default=shutil.which("haproxy") or "/usr/sbin/haproxy",
                   help="the haproxy binary (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        report = install(Path(args.root), Path(args.prefix).resolve(), Path(args.venv).absolute(),
                         args.haproxy)
    except (InstallError, OSError) as exc:
        print(f"falconctl install: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report.lines))
    for error in report.errors:
        print(f"falconctl install: {error}", file=sys.stderr)
    return 1 if report.errors else 0


# -- ExecStartPre of falcon-haproxy.service ---------------------------------------


def haproxy_env_text(s: Settings) -> str:
    """``KEY="value"`` lines for systemd's ``EnvironmentFile=``: what
    ``haproxy.cfg`` expands, plus ``FALCON_HAPROXY_FILES`` (its ``-f`` arguments:
    the config, and the rendered multi-host backend if ``haproxy.hosts`` is set;
    the unit expands it unbraced, so split on spaces: paths without spaces)."""
    from falconctl.stack import haproxy_env, haproxy_files

    files = haproxy_files(s)
    if any(" " in f for f in files):
        raise ConfigError(f"haproxy.config: a path with a space: {files}")
    env = dict(haproxy_env(s), FALCON_HAPROXY_FILES=" ".join(files))
    lines = []
    for key, value in sorted(env.items()):
        if any(c in value for c in "\n\r\0"):
            raise ConfigError(f"{key}: a line break in {value!r}")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{key}="{escaped}"')
    return "# written by falcon-haproxy.service's ExecStartPre from falcon.toml\n" + \
        "\n".join(lines) + "\n"


def fresh_env(path: Path, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without what systemd loaded from the previous ``path``.

    systemd reads the unit's EnvironmentFiles once for the whole start-pre
    step, so this ExecStartPre sees the file it is about to rewrite; its
    ``FALCON_HAPROXY_*`` names are also settings' environment names, and the old
    values would override a changed falcon.toml for ever. A variable whose value
    equals the old file's is dropped (falcon.env, read after it, wins otherwise).
    """
    old: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                old[key.strip()] = value.strip().strip('"').replace('\\"', '"')
    except OSError:
        return dict(env)
    return {k: v for k, v in env.items() if old.get(k) != v}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m falconctl.install")
    sub = p.add_subparsers(dest="command", required=True)
    env = sub.add_parser("haproxy-env", help="write HAProxy's environment file")
    env.add_argument("path")
    args = p.parse_args(argv)
    try:
        text = haproxy_env_text(settings_mod.load(env=fresh_env(Path(args.path), os.environ)))
    except ConfigError as exc:
        print(f"falconctl: configuration error: {exc}", file=sys.stderr)
        return 2
    write_atomically(Path(args.path), text, mode=0o640)
    return 0


if __name__ == "__main__":
    sys.exit(main())
