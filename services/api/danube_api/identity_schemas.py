"""Bodies of the routes about callers: the caller itself, its API tokens, and workers
(DESIGN 7, 11). A token appears in exactly one answer, the one that creates it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from danube_api.schemas import INTEGER_ONLY, Name

TokenName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100),
    Field(description="What the token is for, 1 to 100 characters", examples=["laptop"]),
]
MAX_TOKEN_DAYS = 3650


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class CallerUser(_Public):
    """The caller, when it is a user."""

    id: str
    username: str
    display_name: str
    is_admin: bool


class CallerWorker(_Public):
    """The caller, when it is a worker."""

    id: str
    name: str
    kind: Literal["worker"] = "worker"


class TokenCreate(_Body):
    name: TokenName
    expires_in_days: Annotated[int, Field(ge=1, le=MAX_TOKEN_DAYS), INTEGER_ONLY] | None = Field(
        default=None, description="Days until the token expires (1 to 3650); none: never"
    )


class TokenPublic(_Public):
    """A token's record: never the token itself."""

    id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="The token itself, shown only in this answer")


class WorkerCreate(_Body):
    name: Name


class WorkerPublic(_Public):
    id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


class WorkerCreated(WorkerPublic):
    token: str = Field(description="The worker's token, shown only in this answer")
