"""Bearer tokens: how they are made, recognised and hashed (DESIGN 11).

A token is 32 random bytes, base64url without padding (43 characters), behind a prefix
that says whose it is: `dnb_u_` a user's API token, `dnb_w_` a worker's, `dnb_j_` a
job's. Only `token_sha256(token)` is ever stored; the token is shown once, when made.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets

TOKEN_BYTES = 32
# 32 bytes in base64url without padding: 42 characters of 6 bits and one of 2 (its low 4
# bits zero, so only every fourth letter of the alphabet can end a canonical token).
_BODY = r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]"
_TOKEN = re.compile(rf"dnb_([uwj])_{_BODY}")


class TokenKind(enum.StrEnum):
    """Whose a token is; the value is the letter in its prefix."""

    USER = "u"
    WORKER = "w"
    JOB = "j"

    @property
    def prefix(self) -> str:
        return f"dnb_{self.value}_"


def new_token(kind: TokenKind) -> str:
    """A fresh token of `kind` from the system's CSPRNG."""
    body = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode("ascii")
    return kind.prefix + body


def kind_of(token: str) -> TokenKind | None:
    """The kind of a well-formed token; `None` for anything else (any other length,
    prefix or character, surrounding whitespace, a non-canonical last character)."""
    match = _TOKEN.fullmatch(token)
    return TokenKind(match[1]) if match else None


def token_sha256(token: str) -> bytes:
    """What is stored for a token: the SHA-256 of its UTF-8 text, 32 bytes."""
    # surrogatepass: a str from anywhere hashes without raising; a real token is ASCII.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def token_matches(token: str, stored_sha256: bytes) -> bool:
    """Whether `token` is the one whose hash was stored, in time that does not depend on
    where the hashes first differ."""
    return hmac.compare_digest(token_sha256(token), stored_sha256)
