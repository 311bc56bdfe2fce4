"""Job numbers: each pipeline's counter row, taken in the transaction that inserts the job.

`take_job_number` is one `UPDATE pipelines ... RETURNING`: it bumps the pipeline's
`next_job_number` and hands back the number taken and the pipeline's step definitions. On
PostgreSQL the UPDATE's row lock makes concurrent creations on any number of nodes queue
on the pipeline's row until the first commits, so no two ever read the same number and
nothing retries; on SQLite the single writer already serialises them. The unique
(pipeline_id, number) constraint stays as the backstop. (`RETURNING` needs SQLite 3.35.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.engine import Connection

from danube_shared.db.driver_statements import DriverStatement
from danube_shared.db.schema import Pipeline, StepDefinition

_PIPELINES = cast(Table, Pipeline.__table__)
# Built once: its compiled form is cached for the API's hottest write. On SQLite it runs
# straight on the driver's cursor (`driver_statements`), the steps' JSON decoded by the
# column's own type.
_BUMP = (
    update(_PIPELINES)
    .where(_PIPELINES.c.id == bindparam("pipeline_id"))
    # Setting updated_at to itself keeps its Python `onupdate` from firing: taking a number
    # does not change the pipeline (and the utcnow() call cost CPU on the hot path).
    .values(
        next_job_number=_PIPELINES.c.next_job_number + 1,
        updated_at=_PIPELINES.c.updated_at,
    )
)
_TAKE = DriverStatement(
    _BUMP.returning(_PIPELINES.c.next_job_number - 1, _PIPELINES.c.steps),
    result_types=(None, _PIPELINES.c.steps.type),
)
# For a caller that knows the steps already (a pipeline's steps never change).
_TAKE_NUMBER = DriverStatement(_BUMP.returning(_PIPELINES.c.next_job_number - 1))


@dataclass(frozen=True, slots=True)
class TakenNumber:
    """The number a new job of the pipeline gets, and the definitions of its steps."""

    number: int
    steps: list[StepDefinition]


def take_job_number(connection: Connection, pipeline_id: str) -> TakenNumber | None:
    """Take the pipeline's next job number; `None` if there is no such pipeline. Call it
    in the transaction that inserts the job, so a rollback gives the number back."""
    row = _TAKE.first(connection, {"pipeline_id": pipeline_id})
    if row is None:
        return None
    return TakenNumber(number=int(row[0]), steps=cast(list[StepDefinition], row[1]))


def take_next_number(connection: Connection, pipeline_id: str) -> int | None:
    """`take_job_number` without the step definitions, for a caller that has them (they
    never change once the pipeline is created); `None` if there is no such pipeline."""
    row = _TAKE_NUMBER.first(connection, {"pipeline_id": pipeline_id})
    return None if row is None else int(row[0])
