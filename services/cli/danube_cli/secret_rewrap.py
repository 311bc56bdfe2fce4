"""`danube key rewrap`'s work on the database: which stored secrets are under which key,
and moving them to the active key in committed batches through keyd's `rewrap`.

Each batch is read, sealed again by keyd (the plaintext never leaves keyd), and written
back in one short write transaction that replaces a row's ciphertext only if the row
still holds the ciphertext that was sent (compare and swap). So the job is safe to kill
at any point: a batch is committed whole or not at all, a row is never given a
ciphertext made for an older value of it, and every row keeps a ciphertext under a key
keyd holds (the old keys stay loaded until `danube key retire`). Run again, it picks up
the rows still under another key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.schema import Secret
from danube_shared.errors import KeydRejected

# keyd answers at most MAX_ITEMS (1000) items per request; smaller batches keep each
# write transaction short on a busy database.
DEFAULT_BATCH = 200

Rewrap = Callable[[Sequence[tuple[bytes, str]]], Awaitable[list[bytes]]]


@dataclass(frozen=True, slots=True)
class StoredCiphertext:
    id: str
    ciphertext: bytes

    @property
    def context(self) -> str:
        """keyd's context of a stored secret: its row id (DESIGN 5)."""
        return f"secret:{self.id}"


@dataclass(slots=True)
class RewrapProgress:
    """What a run of `rewrap_all` did."""

    rewrapped: int = 0
    batches: int = 0
    changed_meanwhile: int = 0  # rows rewritten by someone else while their batch ran
    unreadable: list[str] = field(default_factory=list[str])  # ids keyd could not open


# Units of work (DESIGN 6): each is one whole transaction, handed to Database.read/write.


def secrets_per_key(session: Session) -> dict[bytes, int]:
    """How many stored secrets each key id has sealed."""
    rows = session.execute(select(Secret.key_id, func.count()).group_by(Secret.key_id))
    return {bytes(key_id): count for key_id, count in rows}


def count_under(session: Session, key_id: bytes) -> int:
    """How many stored secrets `key_id` has sealed."""
    count = session.scalar(select(func.count()).where(Secret.key_id == key_id))
    return count or 0


def batch_not_under(
    session: Session, active_id: bytes, *, after_id: str, limit: int
) -> list[StoredCiphertext]:
    """Up to `limit` secrets not under `active_id`, by id, after `after_id`."""
    rows = session.execute(
        select(Secret.id, Secret.ciphertext)
        .where(Secret.key_id != active_id, Secret.id > after_id)
        .order_by(Secret.id)
        .limit(limit)
    )
    return [StoredCiphertext(row.id, row.ciphertext) for row in rows]


def store_rewrapped(
    session: Session,
    active_id: bytes,
    batch: Sequence[StoredCiphertext],
    ciphertexts: Sequence[bytes],
) -> int:
    """Give each row its new ciphertext, only where it still holds the one that was
    rewrapped; returns how many rows were changed. One statement run for all rows."""
    table = cast(Table, Secret.__table__)  # a mapped class's table is a Table
    statement = (
        update(table)
        .where(table.c.id == bindparam("row_id"), table.c.ciphertext == bindparam("sent"))
        .values(ciphertext=bindparam("sealed"), key_id=active_id)
    )
    parameters = [
        {"row_id": row.id, "sent": row.ciphertext, "sealed": ciphertext}
        for row, ciphertext in zip(batch, ciphertexts, strict=True)
    ]
    if not parameters:
        return 0
    # A Core UPDATE gives a cursor result; run for many parameter sets, its rowcount is
    # the sum of the rows each one matched.
    result = cast(CursorResult[Any], session.execute(statement, parameters))
    return result.rowcount


async def rewrap_all(
    database: Database,
    rewrap: Rewrap,
    active_id: bytes,
    *,
    batch_size: int = DEFAULT_BATCH,
    between_batches: Callable[[RewrapProgress], Awaitable[None]] | None = None,
) -> RewrapProgress:
    """Move every stored secret not under `active_id` to it, batch by batch, each batch
    committed on its own. A ciphertext keyd cannot open is left as it is and named in
    the result; `KeydRejected` for anything else keyd refuses (such as `key_exhausted`)."""
    progress = RewrapProgress()
    after_id = ""
    while True:
        batch = await database.read(batch_not_under, active_id, after_id=after_id, limit=batch_size)
        if not batch:
            return progress
        after_id = batch[-1].id
        sealed = await _rewrap_batch(rewrap, batch, progress)
        if sealed:
            rows = [row for row, _ in sealed]
            changed = await database.write(
                store_rewrapped, active_id, rows, [ciphertext for _, ciphertext in sealed]
            )
            progress.rewrapped += changed
            progress.changed_meanwhile += len(rows) - changed
        progress.batches += 1
        if between_batches is not None:
            await between_batches(progress)


async def _rewrap_batch(
    rewrap: Rewrap, batch: Sequence[StoredCiphertext], progress: RewrapProgress
) -> list[tuple[StoredCiphertext, bytes]]:
    """The batch's rows with their new ciphertexts. keyd refuses a whole request for one
    ciphertext it cannot open, so such a batch is sent again row by row to set that row
    aside and still move the others."""
    try:
        ciphertexts = await rewrap([(row.ciphertext, row.context) for row in batch])
        return list(zip(batch, ciphertexts, strict=True))
    except KeydRejected as exc:
        if exc.reason != "decrypt_failed":
            raise
    sealed: list[tuple[StoredCiphertext, bytes]] = []
    for row in batch:
        try:
            [ciphertext] = await rewrap([(row.ciphertext, row.context)])
        except KeydRejected as exc:
            if exc.reason != "decrypt_failed":
                raise
            progress.unreadable.append(row.id)
            continue
        sealed.append((row, ciphertext))
    return sealed
