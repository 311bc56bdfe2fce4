"""One repository per aggregate, each built with the session of the unit of work it runs in
(`TeamRepository(session)`). Repositories add, get, list and flush; they never commit: the
caller's `db.write()` block does. A missing id raises `NotFound`, a duplicate `Conflict`;
after either, the unit of work is spoiled and its block should end (it rolls back)."""

from danube_shared.db.repositories.artifacts import ArtifactRepository
from danube_shared.db.repositories.jobs import JobRepository
from danube_shared.db.repositories.logs import LogGap, LogRepository, LogSlice, LogTooLarge
from danube_shared.db.repositories.pipelines import PipelineRepository
from danube_shared.db.repositories.secrets import (
    ResolvedSecret,
    SecretInfo,
    SecretRepository,
    SecretScope,
)
from danube_shared.db.repositories.teams import TeamRepository
from danube_shared.db.repositories.tokens import ActiveToken, TokenRepository
from danube_shared.db.repositories.users import UserRepository
from danube_shared.db.repositories.workers import WorkerRepository

__all__ = [
    "ActiveToken",
    "ArtifactRepository",
    "JobRepository",
    "LogGap",
    "LogRepository",
    "LogSlice",
    "LogTooLarge",
    "PipelineRepository",
    "ResolvedSecret",
    "SecretInfo",
    "SecretRepository",
    "SecretScope",
    "TeamRepository",
    "TokenRepository",
    "UserRepository",
    "WorkerRepository",
]
