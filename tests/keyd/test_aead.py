"""The version-1 ciphertext format and its failure modes."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from danube_keyd.aead import Aead, DecryptFailed

KEY = bytes(range(32))
CONTEXT = "secret:3f2a"
PLAINTEXT = b"hunter2"


@pytest.fixture
def aead() -> Aead:
    return Aead(KEY)


def test_ciphertext_opens_with_plain_aesgcm_per_the_spec(aead: Aead) -> None:
    """byte 0 is 1, bytes 1..4 the key id, 5..16 the nonce; AAD = header + context."""
    ciphertext = aead.encrypt(PLAINTEXT, CONTEXT)
    key_id = hashlib.sha256(b"danube-key-id\x00" + KEY).digest()[:4]
    assert ciphertext[0] == 1
    assert ciphertext[1:5] == key_id
    assert len(ciphertext) == 1 + 4 + 12 + len(PLAINTEXT) + 16
    nonce = ciphertext[5:17]
    opened = AESGCM(KEY).decrypt(nonce, ciphertext[17:], ciphertext[:5] + CONTEXT.encode())
    assert opened == PLAINTEXT


def test_key_id_is_the_spec_derivation(aead: Aead) -> None:
    """key_id = first 4 bytes of SHA-256(b"danube-key-id\\x00" + key)."""
    assert aead.key_id == hashlib.sha256(b"danube-key-id\x00" + KEY).digest()[:4]


def test_round_trip_returns_the_plaintext(aead: Aead) -> None:
    """decrypt(encrypt(p, c), c) == p, including the empty plaintext."""
    for plaintext in (b"", b"x", os.urandom(1000)):
        assert aead.decrypt(aead.encrypt(plaintext, CONTEXT), CONTEXT) == plaintext


def test_every_single_bit_flip_is_rejected(aead: Aead) -> None:
    """Flipping any one bit of a ciphertext makes it fail as DecryptFailed."""
    ciphertext = aead.encrypt(PLAINTEXT, CONTEXT)
    for index in range(len(ciphertext)):
        for bit in range(8):
            flipped = bytearray(ciphertext)
            flipped[index] ^= 1 << bit
            with pytest.raises(DecryptFailed):
                aead.decrypt(bytes(flipped), CONTEXT)


def test_every_truncation_is_rejected(aead: Aead) -> None:
    """Every proper prefix of a ciphertext fails as DecryptFailed."""
    ciphertext = aead.encrypt(PLAINTEXT, CONTEXT)
    for length in range(len(ciphertext)):
        with pytest.raises(DecryptFailed):
            aead.decrypt(ciphertext[:length], CONTEXT)


def test_an_appended_byte_is_rejected(aead: Aead) -> None:
    """Trailing bytes after the tag fail as DecryptFailed."""
    with pytest.raises(DecryptFailed):
        aead.decrypt(aead.encrypt(PLAINTEXT, CONTEXT) + b"\x00", CONTEXT)


def test_another_rows_context_is_rejected(aead: Aead) -> None:
    """A ciphertext bound to one row does not open under another row's context."""
    ciphertext = aead.encrypt(PLAINTEXT, "secret:a")
    with pytest.raises(DecryptFailed):
        aead.decrypt(ciphertext, "secret:b")


def test_swapped_ciphertexts_are_rejected(aead: Aead) -> None:
    """Two rows' ciphertexts swapped between them open under neither context."""
    first = aead.encrypt(b"one", "secret:1")
    second = aead.encrypt(b"two", "secret:2")
    with pytest.raises(DecryptFailed):
        aead.decrypt(first, "secret:2")
    with pytest.raises(DecryptFailed):
        aead.decrypt(second, "secret:1")


def test_another_key_is_rejected(aead: Aead) -> None:
    """A ciphertext made under one key fails under another."""
    ciphertext = aead.encrypt(PLAINTEXT, CONTEXT)
    with pytest.raises(DecryptFailed):
        Aead(os.urandom(32)).decrypt(ciphertext, CONTEXT)


def test_another_key_with_the_same_key_id_is_still_rejected(aead: Aead) -> None:
    """The key id only routes; the tag check rejects a different key regardless."""
    ciphertext = aead.encrypt(PLAINTEXT, CONTEXT)
    other = Aead(os.urandom(32))
    forged = bytes([1]) + other.key_id + ciphertext[5:]
    with pytest.raises(DecryptFailed):
        other.decrypt(forged, CONTEXT)


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_unknown_version_is_rejected(aead: Aead, version: int) -> None:
    """A format version other than 1 fails as DecryptFailed."""
    ciphertext = aead.encrypt(PLAINTEXT, CONTEXT)
    with pytest.raises(DecryptFailed):
        aead.decrypt(bytes([version]) + ciphertext[1:], CONTEXT)


def test_context_that_cannot_be_utf8_is_rejected(aead: Aead) -> None:
    """A context with a lone surrogate fails as DecryptFailed, not UnicodeEncodeError."""
    with pytest.raises(DecryptFailed):
        aead.decrypt(aead.encrypt(PLAINTEXT, CONTEXT), "secret:\udc80")


def test_nonces_are_unique_over_many_encryptions(aead: Aead) -> None:
    """20,000 encryptions of the same plaintext draw 20,000 different nonces."""
    nonces = {aead.encrypt(PLAINTEXT, CONTEXT)[5:17] for _ in range(20_000)}
    assert len(nonces) == 20_000


def test_encryptions_are_counted(aead: Aead) -> None:
    """The per-key counter grows by one per encryption (it drives rotation)."""
    for _ in range(5):
        aead.encrypt(PLAINTEXT, CONTEXT)
    assert aead.encryptions == 5


def test_decrypt_into_fills_the_callers_buffer(aead: Aead) -> None:
    """decrypt_into writes the plaintext into the given bytearray."""
    out = bytearray(len(PLAINTEXT))
    aead.decrypt_into(aead.encrypt(PLAINTEXT, CONTEXT), CONTEXT, out)
    assert out == PLAINTEXT


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_key_of_the_wrong_size_is_refused(size: int) -> None:
    """Aead takes exactly 32 bytes."""
    with pytest.raises(ValueError, match="32 bytes"):
        Aead(bytes(size))
