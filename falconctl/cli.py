"""``falconctl``: the operator's one command.

    falconctl daemon            run the inference daemon (foreground)
    falconctl edge              run the HTTP edge (gunicorn + Falcon, foreground)
    falconctl grpc              run the gRPC face (inference.GRPCInferenceService, foreground)
    falconctl haproxy           run HAProxy with the project's config
    falconctl up                the whole stack in the foreground; Ctrl-C stops it
    falconctl config            print the effective configuration (TOML)
    falconctl config --describe every key, its environment variable, default and meaning
    falconctl models list|status|load|unload|split|rollback   model versions while serving
    falconctl ship              run the audit shipper (WAL -> PostgreSQL)
    falconctl wal tail|dump|verify|reship   operators' WAL tools
    falconctl install           systemd units, /etc/falcon, the falcon user
    falconctl keys create|list|revoke   API keys (shown once, stored as hashes)
    falconctl hosts list|drain|maint|ready|traffic   serving hosts behind HAProxy (runtime API)
    falconctl hosts load|unload|split|rollback|status|history|forget   the fleet's desired models
    falconctl reconcile         this host's fleet reconciler (foreground)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import settings as settings_mod
from service.durable import write_atomically
from service.metrics import enable as enable_metrics
from settings import SETTINGS, ConfigError, Settings
from settings.schema import DEFAULT_CONFIG_PATH

log = logging.getLogger("falconctl")


def _setup_logging(name: str) -> None:
    logging.basicConfig(level=os.environ.get("FALCON_LOG_LEVEL", "INFO"),
                        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # a TOML basic string: JSON escapes minus DEL, plus no surrogates
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return str(value)


def settings_toml(s: Settings) -> str:
    """``s`` as a TOML file the settings loader reads back."""
    lines = []
    for section, values in s.as_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines) + "\n"


def cmd_config(s: Settings, args: argparse.Namespace) -> int:
    if args.describe:
        for item in SETTINGS:
            print(f"{item.section}.{item.name}  (${item.env}, {item.type.__name__}, "
                  f"default {_toml_value(item.default)})\n    {item.doc}")
        describe_model_keys()
        return 0
    print(settings_toml(s), end="")
    return 0


def describe_model_keys() -> None:
    """The keys of a model's ``config.toml`` (same schema mechanism as falcon.toml)."""
    from daemon.repository import ModelConfig
    from settings.tables import describe

    print("\nPer model, in <model_repository>/<model>/config.toml (no environment variables):")
    for item in describe(ModelConfig):
        default = "derived from the model" if item.default is None else _toml_value(
            list(item.default) if isinstance(item.default, tuple) else item.default)
        print(f"{item.name}  ({item.type}, default {default})\n    {item.doc}")


def cmd_daemon(s: Settings, args: argparse.Namespace) -> int:
    _setup_logging("daemon")
    enable_metrics(s.paths.run_dir)
    from daemon.main import run

    return run(s)


def cmd_edge(s: Settings, args: argparse.Namespace) -> int:
    if s.edge.worker_class == "gevent":  # before the edge's modules make a lock or a socket
        from gevent import monkey

        monkey.patch_all()
    enable_metrics(s.paths.run_dir)
    from edge.server import run

    return run(s)


def cmd_grpc(s: Settings, args: argparse.Namespace) -> int:
    _setup_logging("grpc")
    enable_metrics(s.paths.run_dir)
    from edge.grpcface.server import run

    return run(s)


def cmd_haproxy(s: Settings, args: argparse.Namespace) -> int:
    from falconctl.stack import haproxy_env, haproxy_files

    os.execvpe(s.haproxy.binary, [s.haproxy.binary, "-W", "-db", *haproxy_files(s)],
               {**os.environ, **haproxy_env(s)})


def audit_dsn(s: Settings) -> str:
    if not s.audit.dsn:
        raise ConfigError("audit.dsn is empty: set it ($FALCON_AUDIT_DSN), or use "
                          "`falconctl up`, which starts an embedded PostgreSQL")
    return s.audit.dsn


def cmd_ship(s: Settings, args: argparse.Namespace) -> int:
    _setup_logging("shipper")
    enable_metrics(s.paths.run_dir)
    from audit.ship_main import run

    return run(s, audit_dsn(s))


def _store(s: Settings) -> Any:
    from audit.store import PgStore

    return PgStore(audit_dsn(s))


def cmd_up(s: Settings, args: argparse.Namespace) -> int:
    from apikeys import KeysFileError
    from audit.pg import PgError
    from falconctl.keys import create_demo_key
    from falconctl.stack import Stack, StackError
    from falconctl.supervisor import Supervisor
    from falconctl.up import banner, dev_env

    base = dict(os.environ, **({"FALCON_CONFIG": args.config} if args.config else {}))
    env = dev_env(Path(args.root).resolve(), base)
    stack = Stack(env, Path(env["FALCON_PATHS_STATE_DIR"]) / "logs")
    stop = {"signal": 0}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda n, f: stop.update(signal=n))
    try:
        key = create_demo_key(stack.settings) if stack.settings.auth.enabled else None
        stack.start(audit=True, cache=True, grpc=True)
    except (StackError, PgError, KeysFileError) as exc:
        print(f"falconctl up: {exc}", file=sys.stderr)
        return 1
    up_config = Path(args.root).resolve() / UP_CONFIG
    write_atomically(up_config, "# written by `falconctl up` while it runs: the settings of "
                     "its stack,\n# read by falconctl's operator commands run in this "
                     "checkout\n" + settings_toml(stack.settings), mode=0o600)
    print(banner(stack.settings, Path(args.root).resolve(), key), flush=True)
    try:
        return Supervisor(stack).run(stop)  # restarts what exits; stops on a crash loop
    finally:
        up_config.unlink(missing_ok=True)


def cmd_install(s: Settings, args: argparse.Namespace) -> int:
    from falconctl.install import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="falconctl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML config file (default $FALCON_CONFIG or "
                                    "/etc/falcon/falcon.toml if it exists)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("config", help="print the effective configuration")
    c.add_argument("--describe", action="store_true", help="describe every key")
    c.set_defaults(func=cmd_config)
    sub.add_parser("daemon", help="run the inference daemon").set_defaults(func=cmd_daemon)
    sub.add_parser("edge", help="run the HTTP edge").set_defaults(func=cmd_edge)
    sub.add_parser("grpc", help="run the gRPC face").set_defaults(func=cmd_grpc)
    sub.add_parser("haproxy", help="run HAProxy with the project's config").set_defaults(
        func=cmd_haproxy)
    from falconctl.models import add_subcommands as add_models_subcommands

    add_models_subcommands(sub)
    sub.add_parser("ship", help="run the audit shipper").set_defaults(func=cmd_ship)
    from audit.walcli import add_subcommands

    add_subcommands(sub, lambda s: Path(s.wal_dir), _store)
    from falconctl.keys import add_subcommands as add_keys_subcommands

    add_keys_subcommands(sub)
    from falconctl.hosts import add_subcommands as add_hosts_subcommands

    add_hosts_subcommands(sub)
    u = sub.add_parser("up", help="run daemon, edge and HAProxy in the foreground")
    u.add_argument("--root", default=".", help="project checkout (state goes to ROOT/var)")
    u.set_defaults(func=cmd_up)
    from falconctl.install import add_arguments as add_install_arguments

    i = sub.add_parser("install", help="install the systemd units, /etc/falcon and the user")
    add_install_arguments(i)
    i.set_defaults(func=cmd_install)
    return p


# `falconctl up` writes its stack's settings here (relative to the checkout), so the
# operator commands run in the same checkout find that stack when nothing else is
# configured; removed when `up` stops.
UP_CONFIG = Path("var") / "up.toml"
OPERATOR_COMMANDS = ("config", "models", "keys", "wal", "hosts")


def config_path(args: argparse.Namespace, env: dict[str, str] | os._Environ[str]) -> str | None:
    """The config file: ``--config``, else ``$FALCON_CONFIG`` or /etc/falcon/falcon.toml
    (the settings loader's own rule), else, for an operator command, the settings of a
    ``falconctl up`` running in this checkout (``var/up.toml``)."""
    if args.config is not None or "FALCON_CONFIG" in env or DEFAULT_CONFIG_PATH.exists():
        return args.config
    if args.command in OPERATOR_COMMANDS and UP_CONFIG.is_file():
        return str(UP_CONFIG)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        s = settings_mod.load(config_path(args, os.environ))
        return int(args.func(s, args) or 0)
    except ConfigError as exc:
        print(f"falconctl: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
