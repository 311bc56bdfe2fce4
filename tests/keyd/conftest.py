"""Fixtures for keyd: a home directory with a generated key and a config, and a real
`danube-keyd` process serving real ipc:// sockets in it (the helpers are in tests/support/keyd.py).

Every process a test starts is killed by its pid in teardown, whatever happened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.keyd import (
    KeydHome,
    KeydProcess,
    kill_every,
    make_home,
    remove_homes,
    spawn,
    wait_ready,
)


@pytest.fixture
def new_home() -> Iterator[Callable[..., KeydHome]]:
    """Make homes (keyword arguments go to [keyd] in the config); removed at teardown."""
    homes: list[KeydHome] = []

    def new(**keyd: Any) -> KeydHome:
        home = make_home(**keyd)
        homes.append(home)
        return home

    yield new
    remove_homes(homes)


@pytest.fixture
def keyd_home(new_home: Callable[..., KeydHome]) -> KeydHome:
    return new_home()


@pytest.fixture
def start_keyd(new_home: Callable[..., KeydHome]) -> Iterator[Callable[..., KeydProcess]]:
    """Start keyd processes for a home; every one is killed by pid at teardown."""
    started: list[KeydProcess] = []

    def start(home: KeydHome, *, ready: bool = True) -> KeydProcess:
        keyd = spawn(home)
        started.append(keyd)
        if ready:
            wait_ready(keyd)
        return keyd

    try:
        yield start
    finally:
        kill_every(started)


@pytest.fixture
def keyd(keyd_home: KeydHome, start_keyd: Callable[..., KeydProcess]) -> KeydProcess:
    """A running keyd in its own home, ready on both sockets."""
    return start_keyd(keyd_home)
