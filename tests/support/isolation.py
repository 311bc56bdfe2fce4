"""What a test needs to run one of our programs on its own: a free loopback port, and an
environment without the test runner's Danube settings (only the config file the test
writes may count)."""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def program_environment() -> dict[str, str]:
    """This process's environment without any `DANUBE_` variable."""
    return {name: value for name, value in os.environ.items() if not name.startswith("DANUBE_")}
