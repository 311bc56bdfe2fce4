"""One repository per aggregate, each built with the session of the unit of work it runs in
(`TeamRepository(session)`, a synchronous `Session`). Repositories add, get, list and
flush; they never commit: the unit of work they run in (`db.write(unit)`) does. A missing id raises `NotFound`, a duplicate `Conflict`;
after either, the unit of work is spoiled and should end (it rolls back)."""

from danube_shared.db.repositories.artifacts import ArtifactRepository
from danube_shared.db.repositories.jobs import (
    JobDraft,
    JobRepository,
    NewJob,
    NewStep,
    insert_job,
)
from danube_shared.db.repositories.logs import (
    LogGap,
    LogRepository,
    LogSlice,
    LogTooLarge,
    append_at_end,
)
from danube_shared.db.repositories.pipelines import PipelineRepository
from danube_shared.db.repositories.secrets import (
    ResolvedSecret,
    SecretInfo,
    SecretRepository,
    SecretScope,
    secret_context,
)
from danube_shared.db.repositories.teams import TeamRepository
from danube_shared.db.repositories.tokens import ActiveToken, TokenRepository
from danube_shared.db.repositories.users import UserRepository
from danube_shared.db.repositories.workers import WorkerRepository

__all__ = [
    "ActiveToken",
    "ArtifactRepository",
    "JobDraft",
    "JobRepository",
    "LogGap",
    "LogRepository",
    "LogSlice",
    "LogTooLarge",
    "NewJob",
    "NewStep",
    "PipelineRepository",
    "ResolvedSecret",
    "SecretInfo",
    "SecretRepository",
    "SecretScope",
    "TeamRepository",
    "TokenRepository",
    "UserRepository",
    "WorkerRepository",
    "append_at_end",
    "insert_job",
    "secret_context",
]
