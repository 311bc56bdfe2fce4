"""What each page shows, read in one unit of work per page and handed to the templates as
plain values (no ORM object outlives its session). Nothing here holds a secret's value or
a token: the queries never select them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_shared.db.repositories import JobRepository, PipelineRepository, SecretRepository
from danube_shared.db.repositories.secrets import SecretScope
from danube_shared.db.repositories.teams import TeamRepository
from danube_shared.db.schema import Job, Step, Team, TeamMember, TeamRole, User
from danube_shared.db.timestamps import utcnow

# A page lists at most this many of anything; the JSON API pages through the rest.
PAGE_ITEMS: Final = 200
LATEST_JOBS: Final = 20


@dataclass(frozen=True, slots=True)
class TeamRow:
    id: str
    name: str
    role: TeamRole | None


@dataclass(frozen=True, slots=True)
class MemberRow:
    username: str
    display_name: str
    role: TeamRole


@dataclass(frozen=True, slots=True)
class NamedRow:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class TeamView:
    team: NamedRow
    pipelines: list[NamedRow]
    members: list[MemberRow]
    secret_names: list[str]


@dataclass(frozen=True, slots=True)
class StepRow:
    position: int
    name: str
    command: str
    status: str
    exit_code: int | None
    duration: str
    log_length: int
    final: bool


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    number: int
    status: str
    reason: str | None
    created_at: datetime
    duration: str
    final: bool
    cancel_requested: bool
    steps: list[StepRow]


@dataclass(frozen=True, slots=True)
class PipelineView:
    team: NamedRow
    pipeline: NamedRow
    steps: list[tuple[str, str]]  # name, command
    jobs: list[JobRow]


@dataclass(frozen=True, slots=True)
class JobView:
    team: NamedRow
    pipeline: NamedRow
    job: JobRow


def duration_text(started: datetime | None, finished: datetime | None, now: datetime) -> str:
    """`4 s`, `2 min 5 s`, `1 h 3 min`; empty before the start."""
    if started is None:
        return ""
    seconds = max(int(((finished or now) - started).total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _step_row(step: Step, now: datetime) -> StepRow:
    return StepRow(
        position=step.position,
        name=step.name,
        command=step.command,
        status=str(step.status),
        exit_code=step.exit_code,
        duration=duration_text(step.started_at, step.finished_at, now),
        log_length=step.log_length,
        final=step.status.is_final,
    )


def _job_row(job: Job, now: datetime) -> JobRow:
    return JobRow(
        id=job.id,
        number=job.number,
        status=str(job.status),
        reason=job.reason,
        created_at=job.created_at,
        duration=duration_text(job.started_at, job.finished_at, now),
        final=job.status.is_final,
        cancel_requested=job.cancel_requested,
        steps=[_step_row(step, now) for step in job.steps],
    )


def teams_of(session: Session, user_id: str, *, is_admin: bool) -> list[TeamRow]:
    """The user's teams by name with their role; for a site admin, every team."""
    statement = (
        select(Team.id, Team.name, TeamMember.role)
        .outerjoin(TeamMember, (TeamMember.team_id == Team.id) & (TeamMember.user_id == user_id))
        .order_by(Team.name)
        .limit(PAGE_ITEMS)
    )
    if not is_admin:
        statement = statement.where(TeamMember.user_id == user_id)
    return [TeamRow(id=row[0], name=row[1], role=row[2]) for row in session.execute(statement)]


def team_view(session: Session, team_id: str) -> TeamView:
    team = TeamRepository(session).get(team_id)
    pipelines = PipelineRepository(session).list_for_team(team_id, limit=PAGE_ITEMS)
    members = session.execute(
        select(User.username, User.display_name, TeamMember.role)
        .join(User, User.id == TeamMember.user_id)
        .where(TeamMember.team_id == team_id)
        .order_by(User.username)
        .limit(PAGE_ITEMS)
    )
    secrets = SecretRepository(session).list_names(SecretScope.for_team(team_id), limit=PAGE_ITEMS)
    return TeamView(
        team=NamedRow(team.id, team.name),
        pipelines=[NamedRow(pipeline.id, pipeline.name) for pipeline in pipelines],
        members=[MemberRow(row[0], row[1], row[2]) for row in members],
        secret_names=[secret.name for secret in secrets],
    )


def pipeline_view(session: Session, pipeline_id: str) -> PipelineView:
    pipeline = PipelineRepository(session).get(pipeline_id)
    team = TeamRepository(session).get(pipeline.team_id)
    jobs = JobRepository(session).list_for_pipeline(pipeline_id, limit=LATEST_JOBS)
    now = utcnow()
    return PipelineView(
        team=NamedRow(team.id, team.name),
        pipeline=NamedRow(pipeline.id, pipeline.name),
        steps=[(step["name"], step["command"]) for step in pipeline.steps],
        jobs=[_job_row(job, now) for job in jobs],
    )


def job_view(session: Session, job_id: str) -> JobView:
    job = JobRepository(session).get(job_id)
    pipeline = PipelineRepository(session).get(job.pipeline_id)
    team = TeamRepository(session).get(pipeline.team_id)
    return JobView(
        team=NamedRow(team.id, team.name),
        pipeline=NamedRow(pipeline.id, pipeline.name),
        job=_job_row(job, utcnow()),
    )


def job_status(session: Session, job_id: str) -> JobRow:
    return _job_row(JobRepository(session).get(job_id), utcnow())
