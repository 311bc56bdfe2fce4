"""Bearer tokens: their format, their kind, their stored hash."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from danube_shared.tokens import (
    TOKEN_BYTES,
    TokenKind,
    kind_of,
    new_token,
    token_matches,
    token_sha256,
)


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [(TokenKind.USER, "dnb_u_"), (TokenKind.WORKER, "dnb_w_"), (TokenKind.JOB, "dnb_j_")],
)
def test_a_new_token_is_its_prefix_and_32_random_bytes_in_unpadded_base64url(
    kind: TokenKind, prefix: str
):
    token = new_token(kind)
    assert token.startswith(prefix)
    body = token.removeprefix(prefix)
    assert len(body) == 43
    assert "=" not in body
    assert len(base64.urlsafe_b64decode(body + "=")) == TOKEN_BYTES


@pytest.mark.parametrize("kind", list(TokenKind))
def test_a_new_token_is_recognised_as_its_kind(kind: TokenKind):
    assert kind_of(new_token(kind)) == kind


def test_new_tokens_differ():
    assert len({new_token(TokenKind.USER) for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "dnb_u_",
        "dnb_x_" + "A" * 43,  # unknown kind
        "DNB_U_" + "A" * 43,  # prefixes are lower case
        "dnb_u_" + "A" * 42,  # short
        "dnb_u_" + "A" * 44,  # long
        "dnb_u_" + "A" * 42 + "=",  # padding
        "dnb_u_" + "A" * 42 + "B",  # not a canonical encoding of 32 bytes
        "dnb_u_" + "A" * 41 + "+A",  # standard base64, not base64url
        "dnb_u_" + "A" * 41 + "/A",
        " dnb_u_" + "A" * 43,  # whitespace around it
        "dnb_u_" + "A" * 43 + "\n",
        "Bearer dnb_u_" + "A" * 43,
        "dnb_u_" + "\uff21" * 43,  # fullwidth letters are not ASCII
    ],
)
def test_anything_but_a_well_formed_token_has_no_kind(candidate: str):
    assert kind_of(candidate) is None


def test_the_stored_hash_is_the_sha256_of_the_utf8_token():
    token = new_token(TokenKind.WORKER)
    assert token_sha256(token) == hashlib.sha256(token.encode()).digest()
    assert len(token_sha256(token)) == 32


def test_a_token_matches_its_own_hash_only():
    token, other = new_token(TokenKind.JOB), new_token(TokenKind.JOB)
    assert token_matches(token, token_sha256(token))
    assert not token_matches(other, token_sha256(token))
    assert not token_matches(token, b"")


@given(st.text())
def test_kind_of_never_raises_and_finds_a_kind_only_in_the_token_format(candidate: str):
    kind = kind_of(candidate)
    if kind is not None:
        assert candidate.startswith(kind.prefix)
        assert len(candidate) == len(kind.prefix) + 43
        assert candidate.isascii()


@given(st.text())
def test_any_string_hashes_to_32_bytes(candidate: str):
    assert len(token_sha256(candidate)) == 32


@given(st.sampled_from(list(TokenKind)), st.binary(min_size=TOKEN_BYTES, max_size=TOKEN_BYTES))
def test_every_32_byte_value_makes_a_token_of_its_kind(kind: TokenKind, raw: bytes):
    body = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert kind_of(kind.prefix + body) == kind
