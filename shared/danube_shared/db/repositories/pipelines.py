"""Pipelines: a team's named, ordered lists of step definitions."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_shared.db.ids import new_id
from danube_shared.db.paging import check_page
from danube_shared.db.repositories.flushing import flush
from danube_shared.db.repositories.teams import TeamRepository
from danube_shared.db.schema import STEP_TIMEOUT_DEFAULT_S, Pipeline, StepDefinition
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import NotFound


class PipelineRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create(self, team_id: str, *, name: str, steps: Sequence[StepDefinition]) -> Pipeline:
        """A new pipeline of the team; `NotFound` if the team does not exist, `Conflict` if
        the team already has a pipeline of that name."""
        now = utcnow()
        pipeline = Pipeline(
            id=new_id(),
            team_id=team_id,
            name=name,
            # Plain dicts holding exactly the three keys, in the order given; a definition
            # without a timeout is stored with the default, so every stored one has it.
            steps=[
                StepDefinition(
                    name=step["name"],
                    command=step["command"],
                    timeout_s=step.get("timeout_s", STEP_TIMEOUT_DEFAULT_S),
                )
                for step in steps
            ],
            created_at=now,
            updated_at=now,
        )
        self._session.add(pipeline)
        flush(
            self._session,
            conflict=f"team {team_id} already has a pipeline named {name!r}",
            missing=f"team {team_id} not found",
        )
        return pipeline

    def get(self, pipeline_id: str) -> Pipeline:
        pipeline = self._session.get(Pipeline, pipeline_id)
        if pipeline is None:
            raise NotFound(f"pipeline {pipeline_id} not found")
        return pipeline

    def steps_of(self, pipeline_id: str) -> list[StepDefinition]:
        """The pipeline's step definitions, in order, read alone (no mapped instance)."""
        steps = self._session.scalar(select(Pipeline.steps).where(Pipeline.id == pipeline_id))
        if steps is None:
            raise NotFound(f"pipeline {pipeline_id} not found")
        return steps

    def list_for_team(
        self, team_id: str, *, limit: int = 50, offset: int = 0
    ) -> Sequence[Pipeline]:
        """One page of the team's pipelines, by name; `NotFound` if the team does not exist."""
        check_page(limit, offset)
        TeamRepository(self._session).get(team_id)
        statement = (
            select(Pipeline)
            .where(Pipeline.team_id == team_id)
            .order_by(Pipeline.name)
            .limit(limit)
            .offset(offset)
        )
        return (self._session.scalars(statement)).all()
