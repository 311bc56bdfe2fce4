"""The API's routes, one module per aggregate (see `paths` for the URL layout)."""

from __future__ import annotations

from fastapi import APIRouter

from danube_api.routes import (
    caller,
    health,
    jobs,
    pipelines,
    secrets,
    teams,
    users,
    worker,
    worker_admin,
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    teams.router,
    users.router,
    pipelines.router,
    secrets.router,
    jobs.router,
    caller.router,
    worker_admin.router,
    worker.router,
)
