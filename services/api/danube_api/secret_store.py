"""Writing secrets: the value is encrypted by keyd, bound to the row it will be stored in,
and only the ciphertext and its key id reach the database.

The row id is settled before encrypting (context `secret:<id>`): a new secret gets a new
id, a replaced one keeps its row's id, so the ciphertext opens only under that row. If two
writers race on a new name, the repository gives the row the id of whichever ciphertext it
stores last, so the binding holds either way. keyd is called between the two units of
work, never inside the write one (see `job_lifecycle`).
"""

from __future__ import annotations

from danube_api.app_state import AppState
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import SecretRepository, SecretScope
from danube_shared.db.schema import Secret
from danube_shared.keyd_protocol import HEADER_BYTES


def secret_context(secret_id: str) -> str:
    """The keyd context a stored secret's ciphertext is bound to."""
    return f"secret:{secret_id}"


def key_id_of(ciphertext: bytes) -> bytes:
    """The key id written in a version-1 ciphertext's header (bytes 1..4)."""
    return ciphertext[1:HEADER_BYTES]


async def put_secret(
    state: AppState, scope: SecretScope, name: str, value: str
) -> tuple[Secret, bool]:
    """Store `value` as the secret `name` of `scope`; returns the row and whether it is
    new. `NotFound` if the scope does not exist (before keyd is asked anything),
    `KeydUnavailable` if keyd cannot encrypt (nothing is written)."""
    async with state.database.read() as session:
        existing = await SecretRepository(session).get_by_name(scope, name)
    secret_id = existing.id if existing is not None else new_id()
    (ciphertext,) = await state.keyd.encrypt([(value.encode("utf-8"), secret_context(secret_id))])
    async with state.database.write() as session:
        return await SecretRepository(session).upsert(
            scope, name, secret_id=secret_id, ciphertext=ciphertext, key_id=key_id_of(ciphertext)
        )
