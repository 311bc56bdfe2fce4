"""The HTTP API's request and response bodies.

`XCreate` / `XUpdate` are what a caller sends (unknown fields rejected, every string
bounded, because the database leaves lengths to validation); `XPublic` is what the API
answers. No model here has a field that could hold a secret's value on the way out, or a
token hash ever. Path-parameter formats live here too, so routes and docs agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Final, Generic, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from danube_shared.db.schema import NAME_MAX, REASON_MAX, STEP_TIMEOUT_DEFAULT_S

NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# As long as the column that stores it (validation enforces lengths, not the database).
SECRET_NAME_PATTERN: Final = rf"^[A-Za-z_][A-Za-z0-9_]{{0,{NAME_MAX - 1}}}$"
SECRET_VALUE_MAX_BYTES: Final = 64 * 1024
MAX_STEPS: Final = 100

Name = Annotated[
    str,
    StringConstraints(pattern=NAME_PATTERN),
    Field(
        description="1 to 63 characters: lower-case letters, digits, `.`, `_`, `-`; "
        "starting with a letter or digit",
        examples=["build-farm"],
    ),
]
Status = Literal["pending", "running", "succeeded", "failed", "cancelled", "skipped"]
JobStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
FinalStatus = Literal["succeeded", "failed", "cancelled"]


def _integer_only(value: object) -> object:
    """JSON's integers, and numbers with no fraction (JSON Schema counts 2.0 as an
    integer); not `true` or a numeric string, which pydantic's lax mode would take."""
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# On every integer of a request body, after its `Field` (the bounds then stay the schema's
# `minimum` and `maximum`): an integer as the OpenAPI document's `"type": "integer"` says.
INTEGER_ONLY: Final = BeforeValidator(_integer_only)


class _Body(BaseModel):
    """A request body: unknown fields are an error, not silently dropped. Its integers are
    checked by `INTEGER_ONLY`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


# Teams, users and membership


class TeamCreate(_Body):
    name: Name


class TeamPublic(_Public):
    id: str
    name: str
    created_at: datetime


class UserCreate(_Body):
    username: Name
    display_name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="Free text, 1 to 200 characters; defaults to the username"
    )

    def resolved_display_name(self) -> str:
        return self.display_name or self.username


class UserPublic(_Public):
    id: str
    username: str
    display_name: str
    created_at: datetime


Role = Literal["owner", "maintainer", "member"]


class MembershipPut(_Body):
    role: Role = "member"


class MembershipPublic(_Public):
    team_id: str
    user_id: str
    role: Role
    created_at: datetime


# Pipelines


class StepDefinition(_Body):
    """One step of a pipeline: what a job of it runs, in order."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    command: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
    timeout_s: Annotated[int, Field(ge=1, le=86_400), INTEGER_ONLY] = STEP_TIMEOUT_DEFAULT_S


class PipelineCreate(_Body):
    name: Name
    steps: Annotated[list[StepDefinition], Field(min_length=1, max_length=MAX_STEPS)]


class StepDefinitionPublic(_Public):
    name: str
    command: str
    timeout_s: int


class PipelinePublic(_Public):
    id: str
    team_id: str
    name: str
    steps: list[StepDefinitionPublic]
    created_at: datetime


# Secrets


class SecretPut(_Body):
    """A secret's value: written once, never read back through the API."""

    # Unknown keys are refused below without being named: a client that pasted its
    # secret where a key belongs would otherwise get it back in the 422. `extra="allow"`
    # only lets them reach that check, so the schema states the truth: none is accepted.
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})

    @model_validator(mode="after")
    def _only_value(self) -> SecretPut:
        if self.model_extra:
            raise ValueError('has a field that is not allowed here; the body is {"value": "..."}')
        return self

    value: Annotated[
        str,
        Field(
            description="The plaintext, non-empty and at most 64 KiB as UTF-8",
            # Stated for clients; `_size` below enforces it without echoing the value.
            json_schema_extra={"writeOnly": True, "minLength": 1},
            # Out of repr() and str(), so no traceback or debug line shows it.
            repr=False,
        ),
    ]

    @field_validator("value")
    @classmethod
    def _size(cls, value: str) -> str:
        # Worded without the value: validation messages are returned and may be logged.
        if not value:
            raise ValueError("must not be empty")
        try:
            # JSON may escape a lone surrogate (`"\ud800"`), which has no UTF-8 form.
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (no lone surrogates)") from None
        if size > SECRET_VALUE_MAX_BYTES:
            raise ValueError(f"must be at most {SECRET_VALUE_MAX_BYTES} bytes as UTF-8")
        return value


class SecretPublic(_Public):
    """A secret's metadata: its value is never shown."""

    id: str
    name: str
    scope: Literal["team", "pipeline"]
    scope_id: str = Field(description="The id of the team or pipeline the secret belongs to")
    created_at: datetime
    updated_at: datetime


# Jobs, steps and artifacts


class StepPublic(_Public):
    id: str
    position: int = Field(description="0-based index of the step in the pipeline's steps")
    name: str
    command: str
    timeout_s: int = Field(description="Seconds the step may run before the worker stops it")
    status: Status
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None


class StepStarted(_Body):
    """The step began (`running`), or will never run (`skipped`): no exit code."""

    status: Literal["running", "skipped"]


class StepEnded(_Body):
    """The step ended: its exit code (null when it was stopped without one, e.g. timed
    out or cancelled before its shell exited)."""

    status: FinalStatus
    exit_code: Annotated[int, Field(ge=-(2**31), le=2**31 - 1), INTEGER_ONLY] | None = None


# The constraint "an exit code only with a final status" is in the schema itself: a body
# with `running` or `skipped` and an `exit_code` matches neither variant.
StepUpdate = Annotated[StepStarted | StepEnded, Field(discriminator="status")]


class JobPublic(_Public):
    id: str
    pipeline_id: str
    number: int = Field(description="1, 2, 3... per pipeline")
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None = Field(description="The worker that claimed the job")
    node: str | None = Field(description="The API node (`api.node`) it was claimed through")
    cancel_requested: bool = Field(
        description="A member asked to cancel the running job; its worker stops it"
    )
    reason: str | None = Field(
        description="Why the job failed or was cancelled, e.g. `worker lost`"
    )
    steps: list[StepPublic]


class JobClaimed(BaseModel):
    """A job just claimed, with its token: shown here once, never again."""

    job: JobPublic
    token: str = Field(
        description="The job's token (`dnb_j_...`): the worker presents it to keyd's worker "
        "socket to fetch the job's secrets. Not an API token."
    )


class JobFinish(_Body):
    status: FinalStatus
    reason: Annotated[str, StringConstraints(min_length=1, max_length=REASON_MAX)] | None = None


class Heartbeat(BaseModel):
    cancel_requested: bool


class LogAppended(BaseModel):
    length: int = Field(description="Bytes of the step's log stored; the next append's offset")
    cancel_requested: bool


class ArtifactCreate(_Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    # 2**53, not the column's 2**63 - 1: a bound every JSON client reads exactly (as a
    # double), where 2**63 - 1 reads as 2**63, past the bound, and is refused.
    size_bytes: Annotated[int, Field(ge=0, le=2**53), INTEGER_ONLY]
    sha256: Annotated[
        str,
        StringConstraints(pattern=r"^[0-9a-fA-F]{64}$"),
        Field(description="Hex SHA-256 of the file (stored lower-case)"),
    ]
    uri: Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class ArtifactPublic(_Public):
    id: str
    job_id: str
    name: str
    size_bytes: int
    sha256: str
    uri: str
    created_at: datetime


ItemT = TypeVar("ItemT", bound=BaseModel)


class Page(BaseModel, Generic[ItemT]):
    """One page of a list, in the list's documented order."""

    items: list[ItemT]
    next_offset: int | None = Field(
        description="Pass as `offset` to get the next page; null on the last page"
    )

    @classmethod
    def of(cls, rows: Sequence[ItemT], *, limit: int, offset: int) -> Self:
        """The page from up to `limit + 1` rows fetched at `offset`: the extra row only
        says that a next page exists."""
        more = len(rows) > limit
        return cls(items=list(rows[:limit]), next_offset=offset + limit if more else None)
