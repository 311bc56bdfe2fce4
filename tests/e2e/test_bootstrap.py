"""`danube up`'s first run makes the site admin and this node's worker: their tokens are
in 0600 files that work, and no token is ever in `danube up`'s output."""

from __future__ import annotations

import stat

import httpx
import pytest

from danube_shared.tokens import TokenKind, kind_of
from tests.support.stack import Stacks

pytestmark = pytest.mark.e2e


def test_the_first_run_writes_working_admin_and_worker_tokens_and_prints_neither(
    stacks: Stacks,
):
    home, port = stacks.home()
    _stack, up = stacks.start(home, port)
    admin_file, worker_file = home / "admin.token", home / "worker.token"
    tokens = {}
    for path, kind in ((admin_file, TokenKind.USER), (worker_file, TokenKind.WORKER)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        tokens[kind] = path.read_text().strip()
        assert kind_of(tokens[kind]) is kind
    url = f"http://127.0.0.1:{port}/api/v1/user"
    admin = httpx.get(url, headers={"Authorization": f"Bearer {tokens[TokenKind.USER]}"})
    assert admin.json()["username"] == "admin"
    assert admin.json()["is_admin"] is True
    worker = httpx.get(url, headers={"Authorization": f"Bearer {tokens[TokenKind.WORKER]}"})
    assert worker.json()["kind"] == "worker"
    assert httpx.get(url).status_code == 401
    assert str(admin_file) in up.stderr.text + up.stdout.text
    assert up.stop() == 0, up.describe()
    for token in tokens.values():
        assert token not in up.stdout.text
        assert token not in up.stderr.text

    # A second run of the same home keeps the tokens it wrote.
    _stack, up = stacks.start(home, port)
    assert admin_file.read_text().strip() == tokens[TokenKind.USER]
    assert up.stop() == 0, up.describe()
