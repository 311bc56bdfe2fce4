"""Write-only secrets: the value is encrypted by keyd, bound to the row it will be stored
in, and only the ciphertext and its key id reach the database.

The row id is settled before encrypting (context `secret:<id>`): a new secret gets a new
id, a replaced one keeps its row's id, so the ciphertext opens only under that row. If two
writers race on a new name, the repository gives the row the id of whichever ciphertext it
stores last, so the binding holds either way. keyd is called between the two units of
work, never inside the write one (see `keyd_sync`).

Budgets (DESIGN 7): a team or a pipeline holds at most `MAX_SECRETS` secrets and
`MAX_SECRET_BYTES` of values in all, so every job's load (a team's secrets with its
pipeline's) fits one keyd message. They are checked in the write's own unit of work, so
concurrent writers cannot both pass; a value's size is its ciphertext's less keyd's
fixed overhead, which is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import SecretInfo, SecretRepository, SecretScope, secret_context
from danube_shared.db.schema import Secret
from danube_shared.errors import InvalidInput
from danube_shared.keyd_control_client import KeydControl
from danube_shared.keyd_protocol import CIPHERTEXT_OVERHEAD, key_id_of

MAX_SECRETS: Final = 1000
MAX_SECRET_BYTES: Final = 4 * 1024 * 1024


def _check_budget(session: Session, scope: SecretScope, name: str, value_bytes: int) -> None:
    """`InvalidInput` (422) if storing `value_bytes` as `name` would take the scope past
    either budget; the secret being replaced does not count."""
    owner = (
        Secret.team_id == scope.team_id
        if scope.team_id is not None
        else Secret.pipeline_id == scope.pipeline_id
    )
    count, stored = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(func.length(Secret.ciphertext) - CIPHERTEXT_OVERHEAD), 0),
        ).where(owner, Secret.name != name)
    ).one()
    if count + 1 > MAX_SECRETS:
        raise InvalidInput(f"{scope} already holds {count} secrets, the most it may hold")
    if stored + value_bytes > MAX_SECRET_BYTES:
        raise InvalidInput(
            f"{scope}'s secret values would take {stored + value_bytes} bytes; "
            f"at most {MAX_SECRET_BYTES} bytes in all"
        )


def _existing_id(session: Session, scope: SecretScope, name: str) -> str | None:
    existing = SecretRepository(session).get_by_name(scope, name)
    return None if existing is None else existing.id


def _upsert(
    session: Session, scope: SecretScope, name: str, secret_id: str, ciphertext: bytes
) -> tuple[Secret, bool]:
    _check_budget(session, scope, name, len(ciphertext) - CIPHERTEXT_OVERHEAD)
    return SecretRepository(session).upsert(
        scope, name, secret_id=secret_id, ciphertext=ciphertext, key_id=key_id_of(ciphertext)
    )


def _list_names(
    session: Session, scope: SecretScope, limit: int, offset: int
) -> Sequence[SecretInfo]:
    return SecretRepository(session).list_names(scope, limit=limit, offset=offset)


def _delete(session: Session, scope: SecretScope, name: str) -> None:
    SecretRepository(session).delete(scope, name)


class SecretService:
    """Secrets of teams and pipelines, built with the database and the keyd client."""

    def __init__(self, database: Database, keyd: KeydControl) -> None:
        self._database = database
        self._keyd = keyd

    async def put(self, scope: SecretScope, name: str, value: str) -> tuple[Secret, bool]:
        """Store `value` as the secret `name` of `scope`; returns the row and whether it is
        new. `NotFound` if the scope does not exist (before keyd is asked anything),
        `KeydUnavailable` if keyd cannot encrypt (nothing is written)."""
        existing_id = await self._database.read(_existing_id, scope, name)
        secret_id = existing_id if existing_id is not None else new_id()
        (ciphertext,) = await self._keyd.encrypt(
            [(value.encode("utf-8"), secret_context(secret_id))]
        )
        return await self._database.write(_upsert, scope, name, secret_id, ciphertext)

    async def list_names(
        self, scope: SecretScope, *, limit: int, offset: int
    ) -> Sequence[SecretInfo]:
        """One page of the scope's secrets (names and times); `NotFound` if no scope."""
        return await self._database.read(_list_names, scope, limit, offset)

    async def delete(self, scope: SecretScope, name: str) -> None:
        """Delete the secret; `NotFound` if the scope has none of that name."""
        await self._database.write(_delete, scope, name)
