"""A token is shown once and kept nowhere: not in a log line (at trace level), not in the
database file or its WAL; the database holds its SHA-256."""

from __future__ import annotations

from pathlib import Path

import httpx

from danube_shared.config import DatabaseSettings, LogSettings
from danube_shared.logs import configure_logging
from danube_shared.tokens import token_sha256
from tests.api.conftest import ApiCaller, Callers, reset_logging
from tests.support.postgres import sqlite_only


def _database_bytes(path: Path) -> bytes:
    files = [path, path.with_name(path.name + "-wal")]
    return b"".join(file.read_bytes() for file in files if file.exists())


@sqlite_only("reads the SQLite database file and its WAL")
async def test_no_token_is_in_a_log_line_the_database_or_its_wal(
    tmp_path: Path,
    client: httpx.AsyncClient,
    callers: Callers,
    admin: ApiCaller,
    database_settings: DatabaseSettings,
):
    log_path = tmp_path / "api.log"
    with log_path.open("w") as log:
        configure_logging(LogSettings(level="trace"), "danube-api", log)
        try:
            made = await client.post("/api/v1/user/tokens", json={"name": "ci"})
            worker = await client.post("/api/v1/workers", json={"name": "w2"})
            tokens = [
                admin.token,
                callers.member.token,
                callers.worker.token,
                made.json()["token"],
                worker.json()["token"],
            ]
            for token in tokens:
                answer = await client.get(
                    "/api/v1/user", headers={"Authorization": f"Bearer {token}"}
                )
                assert answer.status_code == 200
            # A refused token is not logged either.
            await client.get("/api/v1/user", headers={"Authorization": f"Bearer {tokens[0]}x"})
        finally:
            reset_logging()
    logged = log_path.read_text()
    assert "request" in logged
    stored = _database_bytes(database_settings.path)
    for token in tokens:
        assert token not in logged
        assert token.encode() not in stored
        assert token.split("_", 2)[2].encode() not in stored
        assert token_sha256(token) in stored
