"""Write or check a directory of golden files (the ``make_golden.py`` scripts'
shared ``main``): ``--check`` compares each file with what the code produces
now and names the stale ones; without it, (re)writes them."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(golden: dict[str, bytes], here: Path, argv: list[str], producer: str) -> int:
    """Exit status: 1 if ``--check`` found a missing or different file."""
    check = "--check" in argv
    stale = []
    for name, data in golden.items():
        path = here / name
        if check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
    for name in stale:
        print(f"{name}: differs from what {producer} produces now", file=sys.stderr)
    return 1 if stale else 0
