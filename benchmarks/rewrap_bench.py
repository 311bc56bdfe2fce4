"""`danube key rewrap`'s throughput: `uv run python -m benchmarks.rewrap_bench [--secrets N]
[--batch-size N]`.

A real keyd and a real migrated SQLite file in a fresh directory under /tmp: N secrets
of 64 bytes are encrypted through keyd and stored, the key is rotated (keyd reloads),
and the rewrap loop of `danube key rewrap` (`danube_cli.secret_rewrap.rewrap_all`) moves
them all to the new key in committed batches. Prints rows per second, and for scale the
rate of the same number of rows read and written back unchanged in the same batches (the
database's share of the work).

Not a registered target: it prints its figures and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from benchmarks.keyd_ops_bench import running_keyd
from danube_cli.secret_rewrap import batch_not_under, rewrap_all, store_rewrapped
from danube_keyd.keyring import rotate
from danube_migrator.runner import migrate
from danube_shared.config import DatabaseSettings, KeydSettings, LogSettings
from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.schema import Secret, Team
from danube_shared.db.timestamps import utcnow
from danube_shared.keyd_control_client import KeydControlClient
from danube_shared.logs import configure_logging


def _insert(session: Session, rows: Sequence[tuple[str, bytes]]) -> None:
    team = Team(id=new_id(), name=f"bench-{new_id()}", created_at=utcnow())
    session.add(team)
    session.flush()
    now = utcnow()
    for secret_id, ciphertext in rows:
        session.add(
            Secret(
                id=secret_id,
                team_id=team.id,
                name=f"S_{secret_id}",
                ciphertext=ciphertext,
                key_id=ciphertext[1:5],
                created_at=now,
                updated_at=now,
            )
        )


async def _run(run: Path, secrets: int, batch_size: int) -> None:
    home = run.parent
    keyd = KeydSettings(key_path=home / "keys" / "encryption.key", socket_dir=run)
    database_settings = DatabaseSettings(path=home / "data" / "danube.db")
    await migrate(database_settings)
    database = Database.open(database_settings)
    client = KeydControlClient(keyd, timeout_ms=120_000)
    try:
        ids = [new_id() for _ in range(secrets)]
        for start in range(0, secrets, 1000):
            chunk = ids[start : start + 1000]
            sealed = await client.encrypt([(os.urandom(64), f"secret:{i}") for i in chunk])
            await database.write(_insert, list(zip(chunk, sealed, strict=True)))
        old_id = (await client.ping()).key_id

        # The database's share: the same batches read and written back unchanged.
        started = time.perf_counter()
        after = ""
        while batch := await database.read(
            batch_not_under, b"\0\0\0\0", after_id=after, limit=batch_size
        ):
            after = batch[-1].id
            await database.write(store_rewrapped, old_id, batch, [row.ciphertext for row in batch])
        database_only = time.perf_counter() - started

        rotate(keyd.key_path)
        new_id_ = (await client.keys_reload()).key_id
        started = time.perf_counter()
        progress = await rewrap_all(database, client.rewrap, new_id_, batch_size=batch_size)
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
        await database.dispose()
    print(
        f"rewrap of {progress.rewrapped} secrets in batches of {batch_size}: {elapsed:.2f} s, "
        f"{progress.rewrapped / elapsed:.0f} rows/s "
        f"(database alone, same batches: {secrets / database_only:.0f} rows/s)"
    )


def main() -> None:
    configure_logging(LogSettings(level="warn", format="console"), "rewrap-bench")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rewrap_bench", description=__doc__)
    parser.add_argument("--secrets", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=200)
    args = parser.parse_args()
    binary = Path(sys.executable).with_name("danube-keyd")
    with running_keyd(binary) as (run, _pid):
        asyncio.run(_run(run, args.secrets, args.batch_size))


if __name__ == "__main__":
    main()
