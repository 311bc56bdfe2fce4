"""The domain errors of Danube.

Each error says what went wrong in domain terms and, where it can, what to do about it.
The API maps these to HTTP in one place (`danube_api.problems`); commands map them to exit
codes. No error message ever holds a secret's value or key material.
"""

from __future__ import annotations


class DanubeError(Exception):
    """Base of every error Danube raises on purpose.

    `code` is a stable, machine-readable name; `str(error)` is the human message.
    """

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(DanubeError):
    """The configuration (file, environment or command line) is invalid."""

    code = "config_invalid"


class InvalidInput(DanubeError):
    """A value supplied by a caller is not acceptable."""

    code = "invalid_input"


class NotFound(DanubeError):
    """The named object does not exist."""

    code = "not_found"


class Conflict(DanubeError):
    """The request conflicts with the stored state (a duplicate name, an illegal transition)."""

    code = "conflict"


class DatabaseError(DanubeError):
    """The database cannot serve the request (missing, read-only, full, locked)."""

    code = "database_unavailable"


class SchemaNotAtHead(DatabaseError):
    """The database schema is not at the migration head; run `danube migrate`."""

    code = "schema_not_at_head"


class KeyFileError(DanubeError):
    """keyd refuses its key file (missing, wrong size, owner or permissions)."""

    code = "key_file_refused"


class KeydError(DanubeError):
    """A request to keyd did not succeed."""

    code = "keyd_error"


class KeydUnavailable(KeydError):
    """keyd did not answer within the deadline, or its socket is absent or untrusted."""

    code = "keyd_unavailable"


class KeydRejected(KeydError):
    """keyd answered with an error reply; `reason` is the wire error code."""

    code = "keyd_rejected"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"keyd rejected the request ({reason}): {message}")
        self.reason = reason


class Unauthenticated(DanubeError):
    """No usable credentials: no token, or a malformed, unknown, revoked or expired one,
    or a kind of token that is not accepted here."""

    code = "unauthenticated"


class Forbidden(DanubeError):
    """A known caller without the right to do this."""

    code = "forbidden"
