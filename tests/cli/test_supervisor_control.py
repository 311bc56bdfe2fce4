"""The XML-RPC client `danube up` watches supervisord with."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest

from danube_cli.supervisor_control import SupervisorClient, SupervisorUnavailable


def test_a_supervisord_that_never_answers_is_unavailable_after_the_timeout():
    """A socket that accepts and then says nothing: the call gives up instead of hanging."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="sc") as directory:
        path = Path(directory) / "supervisor.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
            mute.bind(str(path))
            mute.listen()
            with pytest.raises(SupervisorUnavailable, match="timed out"):
                SupervisorClient(path, timeout=0.5).pid()


def test_no_socket_is_unavailable(tmp_path: Path):
    with pytest.raises(SupervisorUnavailable):
        SupervisorClient(tmp_path / "absent.sock").processes()
