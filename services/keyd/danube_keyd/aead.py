"""AES-256-GCM in Danube's version-1 ciphertext format (see `danube_shared.keyd_protocol`).

`Aead` is built once per key and holds the only live copy of it (inside `cryptography`'s
AESGCM object). Every failure to open a ciphertext is one exception, `DecryptFailed`,
whatever the cause, so that callers cannot tell a wrong key from a flipped bit and keyd
never crashes on bad input.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from danube_shared.errors import DanubeError
from danube_shared.keyd_protocol import (
    CIPHERTEXT_OVERHEAD,
    FORMAT_VERSION,
    HEADER_BYTES,
    KEY_BYTES,
    NONCE_BYTES,
    key_id_for,
)


class DecryptFailed(DanubeError):
    """A ciphertext does not open under this key and context."""

    code = "decrypt_failed"

    def __init__(self) -> None:
        super().__init__(
            "ciphertext does not open under this key and context "
            "(wrong key or context, corrupted, or unknown format version)"
        )


class Aead:
    """Encrypts and decrypts with one key in the version-1 format."""

    __slots__ = ("_aesgcm", "_header", "decryptions", "encryptions", "key_id")

    def __init__(self, key: bytes | bytearray) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"an AES-256 key is {KEY_BYTES} bytes, not {len(key)}")
        self._aesgcm = AESGCM(bytes(key))
        self.key_id = key_id_for(key)
        self._header = bytes([FORMAT_VERSION]) + self.key_id
        # How many nonces this key has drawn in this process: random 96-bit nonces stay
        # safe up to about 2**32 encryptions per key, so rotation must come before that.
        self.encryptions = 0
        self.decryptions = 0

    def encrypt(self, plaintext: bytes | bytearray, context: str) -> bytes:
        """The version-1 ciphertext of `plaintext`, bound to `context`."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aesgcm.encrypt(nonce, plaintext, self._header + context.encode())
        self.encryptions += 1
        return self._header + nonce + sealed

    def decrypt(self, ciphertext: bytes, context: str) -> bytes:
        """The plaintext of `ciphertext`; raises `DecryptFailed` on any mismatch."""
        out = bytearray(max(len(ciphertext) - CIPHERTEXT_OVERHEAD, 0))
        self.decrypt_into(ciphertext, context, out)
        return bytes(out)

    def decrypt_into(self, ciphertext: bytes, context: str, out: bytearray) -> None:
        """Decrypt into `out`, which must be exactly `plaintext_size(ciphertext)` bytes,
        so that the plaintext lives only in a buffer the caller can overwrite."""
        if (
            len(ciphertext) < CIPHERTEXT_OVERHEAD
            or len(out) != len(ciphertext) - CIPHERTEXT_OVERHEAD
            or ciphertext[:HEADER_BYTES] != self._header
        ):
            raise DecryptFailed
        try:
            aad = self._header + context.encode()
        except UnicodeEncodeError:  # a str with lone surrogates names no row
            raise DecryptFailed from None
        nonce = ciphertext[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
        try:
            self._aesgcm.decrypt_into(nonce, ciphertext[HEADER_BYTES + NONCE_BYTES :], aad, out)
        except InvalidTag:
            raise DecryptFailed from None
        self.decryptions += 1


def plaintext_size(ciphertext: bytes) -> int:
    """How long the plaintext inside a well-formed ciphertext is (0 if it is too short)."""
    return max(len(ciphertext) - CIPHERTEXT_OVERHEAD, 0)
