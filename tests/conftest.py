"""Shared fixtures: real processes on free ports in temp dirs.

``make_stack`` builds a model repository in a temp dir (the shipped digits demo
plus the synthetic multi-input model), picks free loopback ports and a unique
shared-memory prefix, and starts daemon, edge and HAProxy exactly as
``falconctl up`` does. Teardown stops only what it started, by pid, and checks
that no shared-memory segment with the test's prefix is left behind. The helpers
behind them (and what tests import) are in ``tests/stacks.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from falconctl.stack import Stack
from tests.pg_fixture import pg_cluster, pg_dsn  # noqa: F401  (fixtures: session cluster, DB per module)
from tests.stacks import Memcached, StackFactory


@pytest.fixture(scope="module")
def module_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    factory = StackFactory(tmp_path_factory.mktemp("stacks"))
    yield factory
    assert factory.close() == [], "shared-memory segments left behind"


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    factory = StackFactory(tmp_path)
    yield factory
    assert factory.close() == [], "shared-memory segments left behind"


@pytest.fixture(scope="module")
def stack(module_stacks: StackFactory) -> Stack:
    """One running stack (daemon + 2 edge workers + HAProxy) shared by a module."""
    return module_stacks()


@pytest.fixture
def memcached() -> Iterator[Memcached]:
    server = Memcached().start()
    yield server
    server.stop()
