"""One repository per aggregate, each built with the session of the unit of work it runs in
(`TeamRepository(session)`, a synchronous `Session`). Repositories add, get, list and
flush; they never commit: the unit of work they run in (`db.write(unit)`) does. A missing id raises `NotFound`, a duplicate `Conflict`;
after either, the unit of work is spoiled and should end (it rolls back)."""

from danube_shared.db.repositories.artifacts import ArtifactRepository
from danube_shared.db.repositories.jobs import JobRepository, NewJob, NewStep
from danube_shared.db.repositories.pipelines import PipelineRepository
from danube_shared.db.repositories.secrets import (
    ResolvedSecret,
    SecretInfo,
    SecretRepository,
    SecretScope,
    secret_context,
)
from danube_shared.db.repositories.teams import TeamRepository
from danube_shared.db.repositories.users import UserRepository

__all__ = [
    "ArtifactRepository",
    "JobRepository",
    "NewJob",
    "NewStep",
    "PipelineRepository",
    "ResolvedSecret",
    "SecretInfo",
    "SecretRepository",
    "SecretScope",
    "TeamRepository",
    "UserRepository",
    "secret_context",
]
