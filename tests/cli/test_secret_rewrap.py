"""The database side of `danube key rewrap`, on a real migrated SQLite file: the batches
and the compare-and-swap that never gives a row a ciphertext made for an older value."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_cli.secret_rewrap import (
    batch_not_under,
    rewrap_all,
    secrets_per_key,
    store_rewrapped,
)
from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.schema import Secret, Team
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import KeydRejected

OLD = b"\x01\x01\x01\x01"
NEW = b"\x02\x02\x02\x02"


def _insert(session: Session, rows: Sequence[tuple[str, bytes]]) -> None:
    team = Team(id=new_id(), name="team", created_at=utcnow())
    session.add(team)
    session.flush()
    for secret_id, ciphertext in rows:
        session.add(
            Secret(
                id=secret_id,
                team_id=team.id,
                name=f"S_{secret_id}",
                ciphertext=ciphertext,
                key_id=ciphertext[1:5],
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )


def _ciphertexts(session: Session) -> dict[str, bytes]:
    return {row.id: row.ciphertext for row in session.execute(select(Secret.id, Secret.ciphertext))}


def _set_ciphertext(session: Session, secret_id: str, ciphertext: bytes) -> None:
    secret = session.get(Secret, secret_id)
    assert secret is not None
    secret.ciphertext = ciphertext
    secret.key_id = ciphertext[1:5]


def sealed(key_id: bytes, tag: str) -> bytes:
    """A stand-in ciphertext: version byte, key id, then a tag saying what it holds."""
    return b"\x01" + key_id + tag.encode()


async def test_a_row_changed_after_its_batch_was_read_is_not_overwritten(
    database: Database,
) -> None:
    """store_rewrapped changes a row only if it still holds the ciphertext sent to keyd;
    a row rewritten meanwhile keeps its new value and is not counted."""
    ids = [new_id() for _ in range(3)]
    await database.write(_insert, [(i, sealed(OLD, f"v-{i}")) for i in ids])
    batch = await database.read(batch_not_under, NEW, after_id="", limit=10)
    assert [row.id for row in batch] == ids
    await database.write(_set_ciphertext, ids[1], sealed(NEW, "written-meanwhile"))
    changed = await database.write(
        store_rewrapped, NEW, batch, [sealed(NEW, f"re-{row.id}") for row in batch]
    )
    assert changed == 2
    stored = await database.read(_ciphertexts)
    assert stored[ids[1]] == sealed(NEW, "written-meanwhile")
    assert stored[ids[0]] == sealed(NEW, f"re-{ids[0]}")
    assert await database.read(secrets_per_key) == {NEW: 3}


async def test_rewrap_all_moves_every_row_in_batches_and_sets_aside_unreadable_ones(
    database: Database,
) -> None:
    """rewrap_all goes batch by batch until no row is under another key; a row keyd
    cannot open is left as it is and named, the others in its batch still move."""
    ids = [new_id() for _ in range(10)]
    await database.write(_insert, [(i, sealed(OLD, f"v-{i}")) for i in ids])
    broken = ids[4]
    calls: list[int] = []

    async def rewrap(items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        calls.append(len(items))
        if any(context == f"secret:{broken}" for _, context in items):
            raise KeydRejected("decrypt_failed", "item does not open")
        return [sealed(NEW, f"re-{context}") for _, context in items]

    progress = await rewrap_all(database, rewrap, NEW, batch_size=3)
    assert (progress.rewrapped, progress.unreadable) == (9, [broken])
    assert await database.read(secrets_per_key) == {NEW: 9, OLD: 1}
    assert calls[:2] == [3, 3]  # the second batch holds the broken row: row by row after


async def test_rewrap_all_stops_on_key_exhausted_with_earlier_batches_kept(
    database: Database,
) -> None:
    """A refusal other than decrypt_failed stops the run; batches committed before it
    stay committed."""
    ids = [new_id() for _ in range(6)]
    await database.write(_insert, [(i, sealed(OLD, f"v-{i}")) for i in ids])
    answered: list[int] = []

    async def rewrap(items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        if answered:
            raise KeydRejected("key_exhausted", "rotate the key")
        answered.append(len(items))
        return [sealed(NEW, "x") for _ in items]

    with pytest.raises(KeydRejected):
        await rewrap_all(database, rewrap, NEW, batch_size=4)
    assert await database.read(secrets_per_key) == {NEW: 4, OLD: 2}
