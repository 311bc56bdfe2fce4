"""The ORM models of Danube: every table, its constraints and indexes, in one module.

Constraint names follow `NAMING_CONVENTION`, so migrations can drop and recreate them by
name (SQLite's batch mode depends on it). The schema stays portable to PostgreSQL: generic
types only, ids and times made in Python, string lengths declared here and enforced by the
API's validation (SQLite does not enforce them).

Ids are time-ordered UUID strings (`danube_shared.db.ids.new_id`); every timestamp is an
aware UTC datetime (`danube_shared.db.timestamps.UTCDateTime`).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, NotRequired, TypedDict

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from danube_shared.db.ids import new_id
from danube_shared.db.timestamps import UTCDateTime, utcnow

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Longest values the API accepts; declared on the columns for backends that enforce them.
ID_LENGTH = 36
NAME_MAX = 100
USERNAME_MAX = 64
DISPLAY_NAME_MAX = 200
ARTIFACT_NAME_MAX = 255
URI_MAX = 2048
KEY_ID_LENGTH = 4
SHA256_LENGTH = 32
SHA256_HEX_LENGTH = 64
NODE_MAX = 100
REASON_MAX = 500
# A step's time limit, in seconds: what a definition may ask for, and what it gets if it
# asks for nothing.
STEP_TIMEOUT_MIN_S = 1
STEP_TIMEOUT_MAX_S = 86_400
STEP_TIMEOUT_DEFAULT_S = 3_600


class Status(enum.StrEnum):
    """The state of a job or of one of its steps. `skipped` is a step's only: not run,
    because an earlier step failed or the job was cancelled."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.SKIPPED})


class TeamRole(enum.StrEnum):
    OWNER = "owner"
    MAINTAINER = "maintainer"
    MEMBER = "member"


class StepDefinition(TypedDict):
    """One step of a pipeline, as stored in `pipelines.steps` (a JSON list, in order).

    `timeout_s` is optional when a definition is given; every stored definition has it
    (`PipelineRepository.create` fills in `STEP_TIMEOUT_DEFAULT_S`, and migration 0002
    filled it into the definitions stored before it)."""

    name: str
    command: str
    timeout_s: NotRequired[int]


def _enum_values(enum_class: type[enum.StrEnum]) -> list[str]:
    return [member.value for member in enum_class]


def _enum_type(enum_class: type[enum.StrEnum], name: str) -> Enum:
    # A VARCHAR plus a CHECK constraint on every backend: adding a value later is then a
    # plain constraint change, with no native ENUM type to alter on PostgreSQL.
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=_enum_values,
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {  # noqa: RUF012 -- SQLAlchemy reads this class attribute
        datetime: UTCDateTime(),
        str: String(),
        bytes: LargeBinary(),
    }


def _id_column() -> Mapped[str]:
    return mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)


def _created_at_column() -> Mapped[datetime]:
    return mapped_column(default=utcnow)


def _flag_column() -> Mapped[bool]:
    # The server default lets a migration add the column to a table that has rows.
    return mapped_column(default=False, server_default=false())


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = _id_column()
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), unique=True)
    display_name: Mapped[str] = mapped_column(String(DISPLAY_NAME_MAX))
    created_at: Mapped[datetime] = _created_at_column()
    # A site admin may do what any user may, in every team, and manages users and workers.
    is_admin: Mapped[bool] = _flag_column()


class Worker(Base):
    """A worker identity: its API tokens (`ApiToken.worker_id`) let it claim and run jobs.
    Revoking it revokes its tokens; the row stays, so the jobs it ran still name it."""

    __tablename__ = "workers"

    id: Mapped[str] = _id_column()
    name: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    created_at: Mapped[datetime] = _created_at_column()
    revoked_at: Mapped[datetime | None]


class ApiToken(Base):
    """A user's or a worker's API token: only the SHA-256 of the token, never the token.
    It is active while not revoked and not past `expires_at`."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        # The unique index on token_sha256 serves the lookup of every request; these two
        # serve "a user's tokens, oldest first" and "a worker's tokens" (revoking it).
        Index(None, "user_id", "created_at"),
        Index(None, "worker_id"),
        CheckConstraint("(user_id IS NULL) <> (worker_id IS NULL)", name="one_owner"),
    )

    id: Mapped[str] = _id_column()
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    token_sha256: Mapped[bytes] = mapped_column(LargeBinary(SHA256_LENGTH), unique=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    worker_id: Mapped[str | None] = mapped_column(ForeignKey("workers.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = _created_at_column()
    expires_at: Mapped[datetime | None]
    # Updated at most once a minute per token, not on every request.
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[str] = _id_column()
    name: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    created_at: Mapped[datetime] = _created_at_column()


class TeamMember(Base):
    __tablename__ = "team_members"
    __table_args__ = (Index(None, "user_id"),)

    team_id: Mapped[str] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[TeamRole] = mapped_column(_enum_type(TeamRole, "role"))
    created_at: Mapped[datetime] = _created_at_column()


class Pipeline(Base):
    __tablename__ = "pipelines"
    # The unique (team_id, name) index also serves "a team's pipelines".
    __table_args__ = (
        UniqueConstraint("team_id", "name"),
        CheckConstraint("next_job_number >= 1", name="next_job_number_positive"),
    )

    id: Mapped[str] = _id_column()
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    steps: Mapped[list[StepDefinition]] = mapped_column(JSON)
    created_at: Mapped[datetime] = _created_at_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The number the pipeline's next job gets. Creating a job increments it in the same
    # transaction (`UPDATE ... RETURNING`), so concurrent creations on any number of nodes
    # queue on this row instead of colliding on (jobs.pipeline_id, jobs.number).
    next_job_number: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class Job(Base):
    """One run of a pipeline. `number` counts the pipeline's runs from 1."""

    __tablename__ = "jobs"
    __table_args__ = (
        # Also the index for "a pipeline's jobs, newest first" (scanned backwards).
        UniqueConstraint("pipeline_id", "number"),
        # The claim: the oldest pending job. Also serves any "jobs with this status".
        Index(None, "status", "created_at", "id"),
        # The lost-worker sweep: running jobs whose worker has been silent too long.
        Index(None, "status", "last_seen_at"),
        CheckConstraint("number >= 1", name="number_positive"),
        # One Status enum serves jobs and steps; only a step can be skipped.
        CheckConstraint("status <> 'skipped'", name="status_not_skipped"),
    )

    id: Mapped[str] = _id_column()
    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[Status] = mapped_column(
        _enum_type(Status, "job_status"), default=Status.PENDING, server_default="pending"
    )
    created_at: Mapped[datetime] = _created_at_column()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # SHA-256 of the job token, set when the job starts; the token itself is never stored.
    token_sha256: Mapped[bytes | None] = mapped_column(LargeBinary(SHA256_LENGTH))
    # When keyd's cache of this job's secrets expires; the API reloads keyd with what is
    # left of it after a keyd restart.
    secrets_expire_at: Mapped[datetime | None]
    # The worker that claimed the job and the node (`api.node`) it claimed it through.
    worker_id: Mapped[str | None] = mapped_column(ForeignKey("workers.id", ondelete="SET NULL"))
    node: Mapped[str | None] = mapped_column(String(NODE_MAX))
    claimed_at: Mapped[datetime | None]
    # The lease: when the job's worker last called one of the job's routes.
    last_seen_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = _flag_column()
    # Why the job failed or was cancelled (`worker lost`, `step build timed out after 60 s`).
    reason: Mapped[str | None] = mapped_column(String(REASON_MAX))

    steps: Mapped[list[Step]] = relationship(
        order_by="Step.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="raise",
    )


class Step(Base):
    """One step of a job, copied from the pipeline's definitions when the job is made.
    `position` is the step's index in the pipeline's list, from 0."""

    __tablename__ = "steps"
    # The unique (job_id, position) index also serves "a job's steps, in order".
    __table_args__ = (
        UniqueConstraint("job_id", "position"),
        CheckConstraint("position >= 0", name="position_not_negative"),
        CheckConstraint(
            f"timeout_s BETWEEN {STEP_TIMEOUT_MIN_S} AND {STEP_TIMEOUT_MAX_S}",
            name="timeout_s_in_range",
        ),
        CheckConstraint("log_length >= 0", name="log_length_not_negative"),
    )

    id: Mapped[str] = _id_column()
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    command: Mapped[str] = mapped_column(Text)
    status: Mapped[Status] = mapped_column(
        _enum_type(Status, "step_status"), default=Status.PENDING, server_default="pending"
    )
    exit_code: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Copied from the step's definition when the job is made.
    timeout_s: Mapped[int] = mapped_column(
        Integer, default=STEP_TIMEOUT_DEFAULT_S, server_default=str(STEP_TIMEOUT_DEFAULT_S)
    )
    # Bytes of output stored in `log_chunks`: updated in the transaction that inserts a
    # chunk, so an append and a read know the length without summing the chunks.
    log_length: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class LogChunk(Base):
    """A piece of a step's output, stored as received (already masked by the worker),
    starting at byte `offset` of the step's log. A step's chunks tile its log: each
    starts where the one before it ends. (`offset` is an SQL keyword: quote it in raw SQL.)"""

    __tablename__ = "log_chunks"
    # The unique (step_id, offset) index also serves "a step's log from byte N, in order".
    __table_args__ = (
        UniqueConstraint("step_id", "offset"),
        CheckConstraint('"offset" >= 0', name="offset_not_negative"),
    )

    id: Mapped[str] = _id_column()
    step_id: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))
    offset: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes]
    created_at: Mapped[datetime] = _created_at_column()


class Secret(Base):
    """A team's or a pipeline's secret: only its ciphertext (format v1, bound to the
    context `secret:<id>`) and the id of the key that made it. Never a plaintext."""

    __tablename__ = "secrets"
    # The two unique indexes also serve "a team's secrets" and "a pipeline's secrets".
    # NULLs are distinct, so each applies only to rows of its own scope.
    __table_args__ = (
        UniqueConstraint("team_id", "name"),
        UniqueConstraint("pipeline_id", "name"),
        CheckConstraint("(team_id IS NULL) <> (pipeline_id IS NULL)", name="one_scope"),
    )

    id: Mapped[str] = _id_column()
    team_id: Mapped[str | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    pipeline_id: Mapped[str | None] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    ciphertext: Mapped[bytes]
    key_id: Mapped[bytes] = mapped_column(LargeBinary(KEY_ID_LENGTH))
    created_at: Mapped[datetime] = _created_at_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Artifact(Base):
    """A record of a file a job produced; the file itself lives at `uri`."""

    __tablename__ = "artifacts"
    # The unique (job_id, name) index also serves "a job's artifacts".
    __table_args__ = (
        UniqueConstraint("job_id", "name"),
        CheckConstraint("size_bytes >= 0", name="size_not_negative"),
    )

    id: Mapped[str] = _id_column()
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(ARTIFACT_NAME_MAX))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH))
    uri: Mapped[str] = mapped_column(String(URI_MAX))
    created_at: Mapped[datetime] = _created_at_column()
