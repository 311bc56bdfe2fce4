"""WorkerRepository: workers, and revoking one with its tokens."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import TokenRepository, WorkerRepository
from danube_shared.db.schema import ApiToken, Worker
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, NotFound
from danube_shared.tokens import TokenKind, new_token, token_sha256


async def create_worker(database: Database, name: str) -> Worker:
    return await database.write(lambda session: WorkerRepository(session).create(name=name))


async def test_a_created_worker_can_be_read_back_by_id_and_by_name(database: Database):
    created = await create_worker(database, "node-a")
    by_id = await database.read(lambda session: WorkerRepository(session).get(created.id))
    by_name = await database.read(lambda session: WorkerRepository(session).find_by_name("node-a"))
    assert (by_id.name, by_id.revoked_at) == ("node-a", None)
    assert by_name is not None
    assert by_name.id == created.id
    assert by_id.created_at.tzinfo is not None


async def test_a_missing_worker_is_not_found(database: Database):
    missing = new_id()
    with pytest.raises(NotFound, match=f"worker {missing} not found"):
        await database.read(lambda session: WorkerRepository(session).get(missing))
    assert (
        await database.read(lambda session: WorkerRepository(session).find_by_name("nope")) is None
    )


async def test_a_taken_worker_name_is_a_conflict(database: Database):
    await create_worker(database, "node-a")
    with pytest.raises(Conflict, match="a worker named 'node-a' already exists"):
        await create_worker(database, "node-a")


async def test_workers_are_listed_by_name(database: Database):
    for name in ("charlie", "alpha", "bravo"):
        await create_worker(database, name)
    listed = await database.read(lambda session: WorkerRepository(session).list_workers())
    assert [worker.name for worker in listed] == ["alpha", "bravo", "charlie"]


async def test_revoking_a_worker_revokes_every_token_of_it_and_no_other(database: Database):
    revoked, kept = await create_worker(database, "revoked"), await create_worker(database, "kept")
    tokens = {
        worker.id: [new_token(TokenKind.WORKER) for _ in range(2)] for worker in (revoked, kept)
    }
    for worker_id, worker_tokens in tokens.items():
        for token in worker_tokens:
            await database.write(
                lambda session, worker_id=worker_id, token=token: TokenRepository(
                    session
                ).create_for_worker(worker_id, name="t", token_sha256=token_sha256(token)),
            )
    now = utcnow()
    await database.write(lambda session: WorkerRepository(session).revoke(revoked.id, now=now))

    async def active(token: str) -> bool:
        found = await database.read(
            lambda session: TokenRepository(session).find_active(token_sha256(token), now=now),
        )
        return found is not None

    assert [await active(token) for token in tokens[revoked.id]] == [False, False]
    assert [await active(token) for token in tokens[kept.id]] == [True, True]
    revoked_at = await database.read(
        lambda session: session.scalars(
            select(ApiToken.revoked_at).where(ApiToken.worker_id == revoked.id)
        ).all(),
    )
    assert revoked_at == [now, now]


async def test_a_revoked_worker_gets_no_new_token_and_revoking_it_again_changes_nothing(
    database: Database,
):
    worker = await create_worker(database, "node-a")
    first = utcnow()
    await database.write(lambda session: WorkerRepository(session).revoke(worker.id, now=first))
    again = await database.write(
        lambda session: WorkerRepository(session).revoke(worker.id, now=utcnow())
    )
    assert again.revoked_at == first
    with pytest.raises(Conflict, match="is revoked"):
        await database.write(
            lambda session: TokenRepository(session).create_for_worker(
                worker.id, name="t", token_sha256=token_sha256(new_token(TokenKind.WORKER))
            ),
        )


async def test_a_token_of_a_revoked_worker_is_inactive_even_if_not_revoked_itself(
    database: Database,
):
    """Defence in depth: find_active checks the worker too, not only the token."""
    worker = await create_worker(database, "node-a")
    token = new_token(TokenKind.WORKER)
    await database.write(
        lambda session: TokenRepository(session).create_for_worker(
            worker.id, name="t", token_sha256=token_sha256(token)
        ),
    )

    def revoke_the_worker_only(session: Session) -> None:
        session.get_one(Worker, worker.id).revoked_at = utcnow()

    await database.write(revoke_the_worker_only)
    found = await database.read(
        lambda session: TokenRepository(session).find_active(token_sha256(token), now=utcnow()),
    )
    assert found is None
