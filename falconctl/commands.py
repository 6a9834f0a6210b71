"""What every ``falconctl`` subcommand module shares: the command signature and
the wrapper that turns an expected failure into one line and exit status 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from settings import Settings

Command = Callable[[Settings, argparse.Namespace], int]


def guarded(label: str,
            errors: Callable[[], tuple[type[Exception], ...]]) -> Callable[[Command], Command]:
    """Wrap a command: the exceptions ``errors()`` names become ``falconctl
    LABEL: message`` on stderr and exit status 1 (anything else propagates).
    ``errors`` is called at run time, so a module may import them lazily."""
    def wrap(func: Command) -> Command:
        def run(s: Settings, args: argparse.Namespace) -> int:
            caught = errors()
            try:
                return func(s, args)
            except caught as exc:
                print(f"falconctl {label}: {exc}", file=sys.stderr)
                return 1
        return run
    return wrap
