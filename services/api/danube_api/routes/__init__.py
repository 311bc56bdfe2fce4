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

# The busiest first: a request is matched against the routes in this order, one regular
# expression each, and matching took a fifth of the event loop's time for a job creation
# when `jobs` came after 20 other routes (cProfile). No two routers serve the same path,
# so the order decides nothing else.
ROUTERS: tuple[APIRouter, ...] = (
    jobs.router,
    worker.router,
    health.router,
    teams.router,
    users.router,
    pipelines.router,
    secrets.router,
    caller.router,
    worker_admin.router,
)
