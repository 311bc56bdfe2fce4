"""Liveness and readiness: `/healthz` while the process runs, `/readyz` when it can serve."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from danube_api.deps import DatabaseDep, KeydDep
from danube_api.problems import ProblemResponse, problem, problem_responses
from danube_shared.db.schema_head import ensure_at_head
from danube_shared.errors import DanubeError

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, Literal["ok"]]


@router.get("/healthz", summary="The process is running")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="The schema is at head and keyd answers",
    responses=problem_responses(503),
    response_model=Readiness,
)
async def readyz(database: DatabaseDep, keyd_client: KeydDep) -> Readiness | ProblemResponse:
    async def schema() -> None:
        await ensure_at_head(database.engine)

    async def keyd() -> None:
        await keyd_client.ping()

    names = ("schema", "keyd")
    outcomes = await asyncio.gather(schema(), keyd(), return_exceptions=True)
    failing: list[str] = []
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, DanubeError):
            failing.append(f"{name}: {outcome.message}")
        elif isinstance(outcome, BaseException):
            raise outcome
    if failing:
        return ProblemResponse(problem(503, "not_ready", "Not ready", "; ".join(failing)))
    return Readiness(status="ready", checks=dict.fromkeys(names, "ok"))
