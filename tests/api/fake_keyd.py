"""An in-memory keyd for API tests: the `KeydControl` protocol, honestly.

It encrypts with AES-256-GCM in keyd's version-1 format under a random test key, binds
every ciphertext to its context, decrypts a job's secrets when they are loaded (so a
ciphertext stored under the wrong row fails as it would in keyd), keeps the per-job cache
with its token hash and TTL, and can be switched off (`available = False`: every call
raises `KeydUnavailable`) or restarted (a new boot id, an empty cache).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from danube_shared.errors import KeydRejected, KeydUnavailable
from danube_shared.keyd_protocol import PingReply, key_id_for


@dataclass
class CachedJob:
    token_sha256: bytes
    ttl_s: int
    expires_at: float
    secrets: dict[str, bytes]


@dataclass
class FakeKeyd:
    key: bytes = field(default_factory=lambda: os.urandom(32))
    available: bool = True
    boot_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    jobs: dict[str, CachedJob] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    closed: bool = False

    @property
    def key_id(self) -> bytes:
        return key_id_for(self.key)

    def _enter(self, op: str) -> None:
        self.calls.append(op)
        if not self.available:
            raise KeydUnavailable("keyd is not answering (fake keyd switched off)")

    def restart(self) -> None:
        self.boot_id = uuid.uuid4().hex
        self.jobs.clear()

    def seal(self, plaintext: bytes, context: str) -> bytes:
        header = b"\x01" + self.key_id
        nonce = os.urandom(12)
        return (
            header + nonce + AESGCM(self.key).encrypt(nonce, plaintext, header + context.encode())
        )

    def open(self, ciphertext: bytes, context: str) -> bytes:
        header, nonce, body = ciphertext[:5], ciphertext[5:17], ciphertext[17:]
        if header != b"\x01" + self.key_id:
            raise KeydRejected("decrypt_failed", "the ciphertext does not open")
        try:
            return AESGCM(self.key).decrypt(nonce, body, header + context.encode())
        except InvalidTag:
            raise KeydRejected("decrypt_failed", "the ciphertext does not open") from None

    # KeydControl

    async def ping(self) -> PingReply:
        self._enter("ping")
        return PingReply(v=1, id=1, ok=True, key_id=self.key_id, boot_id=self.boot_id)

    async def encrypt(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        self._enter("encrypt")
        return [self.seal(plaintext, context) for plaintext, context in items]

    async def decrypt(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        self._enter("decrypt")
        return [self.open(ciphertext, context) for ciphertext, context in items]

    async def job_load(
        self,
        job_id: str,
        token_sha256: bytes,
        ttl_s: int,
        secrets: Sequence[tuple[str, bytes, str]],
    ) -> int:
        self._enter("job_load")
        opened = {name: self.open(ciphertext, context) for name, ciphertext, context in secrets}
        self.jobs[job_id] = CachedJob(token_sha256, ttl_s, time.monotonic() + ttl_s, opened)
        return len(opened)

    async def job_drop(self, job_id: str) -> bool:
        self._enter("job_drop")
        return self.jobs.pop(job_id, None) is not None

    async def stats(self) -> dict[str, Any]:
        self._enter("stats")
        return {"jobs_cached": len(self.jobs)}

    async def close(self) -> None:
        self.closed = True

    # What a worker would do through the worker socket.

    def job_secrets(self, job_id: str, token: str) -> dict[str, bytes]:
        cached = self.jobs.get(job_id)
        if cached is None or cached.expires_at < time.monotonic():
            raise KeydRejected("not_found", "no such job cached")
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), cached.token_sha256):
            raise KeydRejected("unauthorized", "wrong token")
        return dict(cached.secrets)
