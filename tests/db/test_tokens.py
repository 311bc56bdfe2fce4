"""TokenRepository: a user's or a worker's tokens, found by hash while active."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import TokenRepository, UserRepository, WorkerRepository
from danube_shared.db.schema import ApiToken, User, Worker
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, InvalidInput, NotFound
from danube_shared.tokens import TokenKind, new_token, token_sha256


@pytest.fixture
async def user(database: Database) -> User:
    return await database.write(
        lambda session: UserRepository(session).create(username="ada", display_name="Ada")
    )


@pytest.fixture
async def worker(database: Database) -> Worker:
    return await database.write(lambda session: WorkerRepository(session).create(name="w1"))


async def user_token(
    database: Database, user: User, *, expires_at: datetime | None = None
) -> tuple[str, ApiToken]:
    token = new_token(TokenKind.USER)
    row = await database.write(
        lambda session: TokenRepository(session).create_for_user(
            user.id, name="laptop", token_sha256=token_sha256(token), expires_at=expires_at
        ),
    )
    return token, row


async def test_an_active_user_token_is_found_by_its_hash_with_its_user(
    database: Database, user: User
):
    token, row = await user_token(database, user)
    found = await database.read(
        lambda session: TokenRepository(session).find_active(token_sha256(token), now=utcnow()),
    )
    assert found is not None
    assert (found.token.id, found.token.name, found.worker) == (row.id, "laptop", None)
    assert found.user is not None
    assert found.user.username == "ada"


async def test_an_active_worker_token_is_found_with_its_worker(database: Database, worker: Worker):
    token = new_token(TokenKind.WORKER)
    await database.write(
        lambda session: TokenRepository(session).create_for_worker(
            worker.id, name="w1", token_sha256=token_sha256(token)
        ),
    )
    found = await database.read(
        lambda session: TokenRepository(session).find_active(token_sha256(token), now=utcnow()),
    )
    assert found is not None
    assert found.user is None
    assert found.worker is not None
    assert found.worker.name == "w1"


async def test_an_unknown_hash_finds_nothing(database: Database, user: User):
    await user_token(database, user)
    found = await database.read(
        lambda session: TokenRepository(session).find_active(
            token_sha256(new_token(TokenKind.USER)), now=utcnow()
        ),
    )
    assert found is None


async def test_a_token_is_active_until_its_expiry_only(database: Database, user: User):
    expires_at = utcnow() + timedelta(days=1)
    token, _ = await user_token(database, user, expires_at=expires_at)

    async def found_at(moment: timedelta) -> bool:
        found = await database.read(
            lambda session: TokenRepository(session).find_active(
                token_sha256(token), now=expires_at + moment
            ),
        )
        return found is not None

    assert [await found_at(timedelta(microseconds=-1)), await found_at(timedelta(0))] == [
        True,
        False,
    ]


async def test_a_revoked_token_is_not_found_nor_listed(database: Database, user: User):
    token, row = await user_token(database, user)
    await database.write(
        lambda session: TokenRepository(session).revoke_for_user(user.id, row.id, now=utcnow()),
    )
    found = await database.read(
        lambda session: TokenRepository(session).find_active(token_sha256(token), now=utcnow()),
    )
    listed = await database.read(lambda session: TokenRepository(session).list_for_user(user.id))
    assert (found, listed) == (None, [])


async def test_another_users_token_cannot_be_revoked_and_looks_missing(
    database: Database, user: User
):
    token, row = await user_token(database, user)
    other = await database.write(
        lambda session: UserRepository(session).create(username="bob", display_name="Bob")
    )
    with pytest.raises(NotFound, match=f"token {row.id} not found"):
        await database.write(
            lambda session: TokenRepository(session).revoke_for_user(
                other.id, row.id, now=utcnow()
            ),
        )
    found = await database.read(
        lambda session: TokenRepository(session).find_active(token_sha256(token), now=utcnow()),
    )
    assert found is not None


async def test_revoking_a_revoked_token_is_not_found(database: Database, user: User):
    _, row = await user_token(database, user)

    def revoke(session: Session) -> ApiToken:
        return TokenRepository(session).revoke_for_user(user.id, row.id, now=utcnow())

    await database.write(revoke)
    with pytest.raises(NotFound):
        await database.write(revoke)


async def test_a_users_tokens_are_listed_oldest_first_and_only_theirs(
    database: Database, user: User, worker: Worker
):
    first, _ = await user_token(database, user)
    second, _ = await user_token(database, user)
    other = await database.write(
        lambda session: UserRepository(session).create(username="bob", display_name="Bob")
    )
    await user_token(database, other)
    await database.write(
        lambda session: TokenRepository(session).create_for_worker(
            worker.id, name="w", token_sha256=token_sha256(new_token(TokenKind.WORKER))
        ),
    )
    listed = await database.read(lambda session: TokenRepository(session).list_for_user(user.id))
    assert [row.token_sha256 for row in listed] == [token_sha256(first), token_sha256(second)]


async def test_a_token_of_an_unknown_user_or_worker_is_not_found(database: Database):
    missing = new_id()
    sha = token_sha256(new_token(TokenKind.USER))
    with pytest.raises(NotFound, match=f"user {missing} not found"):
        await database.write(
            lambda session: TokenRepository(session).create_for_user(
                missing, name="x", token_sha256=sha
            ),
        )
    with pytest.raises(NotFound, match=f"worker {missing} not found"):
        await database.write(
            lambda session: TokenRepository(session).create_for_worker(
                missing, name="x", token_sha256=sha
            ),
        )


async def test_a_hash_that_is_not_32_bytes_is_refused(database: Database, user: User):
    with pytest.raises(InvalidInput, match="32 bytes"):
        await database.write(
            lambda session: TokenRepository(session).create_for_user(
                user.id, name="x", token_sha256=b"short"
            ),
        )


async def test_the_same_hash_twice_is_a_conflict(database: Database, user: User):
    sha = token_sha256(new_token(TokenKind.USER))

    def create(session: Session) -> ApiToken:
        return TokenRepository(session).create_for_user(user.id, name="x", token_sha256=sha)

    await database.write(create)
    with pytest.raises(Conflict):
        await database.write(create)


async def test_last_used_is_written_at_most_once_a_minute(database: Database, user: User):
    _, row = await user_token(database, user)
    start = utcnow()
    moments = [start, start + timedelta(seconds=30), start + timedelta(seconds=60)]
    written = [
        await database.write(
            lambda session, now=now: TokenRepository(session).touch(row.id, now=now)
        )
        for now in moments
    ]
    stored = await database.read(
        lambda session: session.scalar(select(ApiToken.last_used_at).where(ApiToken.id == row.id)),
    )
    assert written == [True, False, True]
    assert stored == moments[2]


async def test_a_token_row_holds_no_token_text(database: Database, user: User):
    """Only the hash is stored: no column of the row holds the token or its body."""
    token, row = await user_token(database, user)
    body = token.removeprefix(TokenKind.USER.prefix)
    stored = await database.read(
        lambda session: session.execute(
            select(ApiToken.__table__).where(ApiToken.id == row.id)
        ).one(),
    )
    as_text = [
        value.decode("latin-1") if isinstance(value, bytes) else str(value) for value in stored
    ]
    assert len(as_text) == 9  # every column of api_tokens
    assert not any(body in text for text in as_text)
