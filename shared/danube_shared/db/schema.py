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
from typing import Any, TypedDict

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


class Status(enum.StrEnum):
    """The state of a job or of one of its steps."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class TeamRole(enum.StrEnum):
    OWNER = "owner"
    MAINTAINER = "maintainer"
    MEMBER = "member"


class StepDefinition(TypedDict):
    """One step of a pipeline, as stored in `pipelines.steps` (a JSON list, in order)."""

    name: str
    command: str


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


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = _id_column()
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), unique=True)
    display_name: Mapped[str] = mapped_column(String(DISPLAY_NAME_MAX))
    created_at: Mapped[datetime] = _created_at_column()


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
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    id: Mapped[str] = _id_column()
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    steps: Mapped[list[StepDefinition]] = mapped_column(JSON)
    created_at: Mapped[datetime] = _created_at_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Job(Base):
    """One run of a pipeline. `number` counts the pipeline's runs from 1."""

    __tablename__ = "jobs"
    __table_args__ = (
        # Also the index for "a pipeline's jobs, newest first" (scanned backwards).
        UniqueConstraint("pipeline_id", "number"),
        Index(None, "status"),
        CheckConstraint("number >= 1", name="number_positive"),
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
