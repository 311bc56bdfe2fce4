"""Fixtures of the end-to-end suite: real `danube up`, real supervisord, real programs.

Each test gets `stacks`, which starts stacks in short temporary directories on free
loopback ports and, at teardown, whatever happened, stops them and kills by pid every
process still belonging to one of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stack import Stacks
from tests.support.stack import stacks as started_stacks


@pytest.fixture
def stacks() -> Iterator[Stacks]:
    with started_stacks() as started:
        yield started
    # A stack stopped the way an operator stops it must leave nothing to kill.
    assert started.stray == [], f"processes outlived their stack: {started.stray}"
