"""The client of keyd's control socket (the API's, and the `danube key` and `danube
audit` commands'): `KeydControlClient`, and the `KeydControl` protocol, the part of it
the API uses, which the API's test fakes satisfy.

Each op is a coroutine over one shared `KeydConnection`. They raise `KeydUnavailable`
when keyd is absent or silent past the deadline, and `KeydRejected(reason, message)`
when keyd answers with an error reply. Nothing here connects or builds a context at
import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from danube_shared.errors import KeydUnavailable
from danube_shared.keyd_protocol import (
    PROTOCOL_VERSION,
    AuditVerifyReply,
    AuditVerifyRequest,
    CiphertextItem,
    EncryptItem,
    EncryptRequest,
    ItemsReply,
    JobDropReply,
    JobDropRequest,
    JobLoadReply,
    JobLoadRequest,
    JobSecret,
    KeysReloadReply,
    KeysReloadRequest,
    PingReply,
    PingRequest,
    RewrapRequest,
    StatsReply,
    StatsRequest,
    control_socket_path,
)
from danube_shared.keyd_transport import KeydConnection

if TYPE_CHECKING:
    from pathlib import Path

    from danube_shared.config import KeydSettings

__all__ = ["KeydControl", "KeydControlClient"]


class KeydControl(Protocol):
    """What the API needs from keyd; `KeydControlClient` is the real one, tests may fake it."""

    async def ping(self) -> PingReply: ...

    async def encrypt(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]: ...

    async def job_load(
        self,
        job_id: str,
        token_sha256: bytes,
        ttl_s: int,
        secrets: Sequence[tuple[str, bytes, str]],
    ) -> int: ...

    async def job_drop(self, job_id: str) -> bool: ...

    async def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class KeydControlClient:
    """The API's connection to keyd's control socket.

    Every request of the process travels over one `KeydConnection`, with a deadline of
    `keyd.request_timeout_ms` each; see there for how it reconnects. Requests are never
    resent behind the caller's back; every op is idempotent, so the caller may simply try
    again. `close()` is a coroutine. Use the client from one event loop at a time.
    """

    def __init__(
        self,
        settings: KeydSettings,
        *,
        expected_uid: int | None = None,
        timeout_ms: int | None = None,
    ) -> None:
        """`timeout_ms` overrides `keyd.request_timeout_ms` (the key commands give
        `rewrap` of a full batch and `audit_verify` of a long chain more time)."""
        self._connection = KeydConnection(
            control_socket_path(settings.socket_dir),
            (settings.request_timeout_ms if timeout_ms is None else timeout_ms) / 1000,
            expected_uid=expected_uid,
        )

    @property
    def path(self) -> Path:
        """The control socket file this client connects to."""
        return self._connection.path

    async def ping(self) -> PingReply:
        request = PingRequest(v=PROTOCOL_VERSION, id=self._connection.next_id())
        return await self._connection.call(request, PingReply)

    async def encrypt(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        """Ciphertexts of (plaintext, context) pairs, in order."""
        request = EncryptRequest(
            v=PROTOCOL_VERSION,
            id=self._connection.next_id(),
            items=[
                EncryptItem(plaintext=plaintext, context=context) for plaintext, context in items
            ],
        )
        reply = await self._connection.call(request, ItemsReply)
        return self._same_length(len(items), reply.items)

    async def rewrap(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        """The (ciphertext, context) pairs sealed again under the active key, in order
        (no plaintext leaves keyd); `KeydRejected` with reason `decrypt_failed` if one
        does not open, `key_exhausted` if the active key is at its limit."""
        request = RewrapRequest(
            v=PROTOCOL_VERSION,
            id=self._connection.next_id(),
            items=[
                CiphertextItem(ciphertext=ciphertext, context=context)
                for ciphertext, context in items
            ],
        )
        reply = await self._connection.call(request, ItemsReply)
        return self._same_length(len(items), reply.items)

    async def keys_reload(self) -> KeysReloadReply:
        """Have keyd load its keyring again; the reply names the active and loaded ids."""
        request = KeysReloadRequest(v=PROTOCOL_VERSION, id=self._connection.next_id())
        return await self._connection.call(request, KeysReloadReply)

    async def audit_verify(self) -> AuditVerifyReply:
        """keyd's check of its audit chain: records, intact, first_bad_line, problem."""
        request = AuditVerifyRequest(v=PROTOCOL_VERSION, id=self._connection.next_id())
        return await self._connection.call(request, AuditVerifyReply)

    async def job_load(
        self,
        job_id: str,
        token_sha256: bytes,
        ttl_s: int,
        secrets: Sequence[tuple[str, bytes, str]],
    ) -> int:
        """Cache a job's secrets, given as (name, ciphertext, context); returns how many."""
        request = JobLoadRequest(
            v=PROTOCOL_VERSION,
            id=self._connection.next_id(),
            job_id=job_id,
            token_sha256=token_sha256,
            ttl_s=ttl_s,
            secrets=[
                JobSecret(name=name, ciphertext=ciphertext, context=context)
                for name, ciphertext, context in secrets
            ],
        )
        return (await self._connection.call(request, JobLoadReply)).loaded

    async def job_drop(self, job_id: str) -> bool:
        """Forget a job's secrets; False if keyd did not hold them."""
        request = JobDropRequest(v=PROTOCOL_VERSION, id=self._connection.next_id(), job_id=job_id)
        return (await self._connection.call(request, JobDropReply)).dropped

    async def stats(self) -> dict[str, Any]:
        """keyd's counters, as `StatsReply` lists them."""
        request = StatsRequest(v=PROTOCOL_VERSION, id=self._connection.next_id())
        fields = msgspec.structs.asdict(await self._connection.call(request, StatsReply))
        for envelope in ("v", "id", "ok"):
            del fields[envelope]
        return fields

    async def close(self) -> None:
        """Fail pending requests, stop the reader, close the socket and its context."""
        await self._connection.close()

    def _same_length(self, expected: int, items: list[bytes]) -> list[bytes]:
        if len(items) != expected:
            raise KeydUnavailable(
                f"keyd at {self.path} answered {len(items)} items for {expected}; "
                "client and keyd disagree on the protocol"
            )
        return items
