"""The app factory: `create_app(settings)` returns the Danube API as an ASGI app.

Nothing connects at import or in the factory. The lifespan opens the database and the
keyd client, starts the claims' wake-ups (LISTEN on PostgreSQL), builds the services routes use (`JobService`, `SecretService`, and the
keeper of keyd's cache, `KeydSync`), starts the keyd watch and the lost-worker sweep, and
on shutdown stops them, cancels pending `job_drop` retries and closes what it opened. A
database or keyd client handed to the factory (tests do) is the caller's to close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from danube_api.auth import Authenticator
from danube_api.body_limit import BodyLimitMiddleware
from danube_api.job_service import JobService, sweep_interval_s
from danube_api.keyd_sync import PING_INTERVAL_S, KeydSync
from danube_api.openapi_document import describe_access
from danube_api.openapi_links import describe_links
from danube_api.problems import install_problem_handlers, problem_responses, use_problem_media_type
from danube_api.request_context import RequestContextMiddleware
from danube_api.routes import ROUTERS
from danube_api.secret_service import SecretService
from danube_api.web import install_web
from danube_api.worker_lane import WorkerLane
from danube_shared.config import Settings
from danube_shared.db.engine import Database
from danube_shared.db.job_notifications import job_wakeups
from danube_shared.keyd_control_client import KeydControl, KeydControlClient

# Bodies are JSON of bounded fields; the largest valid one is a 100-step pipeline.
MAX_BODY_BYTES = 2 * 1024 * 1024
API_VERSION = "1"


def open_database(settings: Settings) -> Database:
    """The API's database: no wait for it is longer than `keyd.request_timeout_ms`.

    DESIGN 7 wants a database that cannot serve answered with 503 in that time, not a
    hang. Two waits are bounded by it (or by `database.busy_timeout_ms`, if shorter):
    the wait for this process's writers ahead (`Database.write`), and SQLite's busy
    wait for another process's write lock at BEGIN. A write thus gives up within twice
    the bound at worst (a full queue, then a lock held elsewhere), typically within one.
    The migrator keeps the configured busy timeout: it may wait for a long write.
    """
    bound = min(settings.database.busy_timeout_ms, settings.keyd.request_timeout_ms)
    return Database.open(
        settings.database.model_copy(update={"busy_timeout_ms": bound}), write_wait_ms=bound
    )


def _operation_id(route: APIRoute) -> str:
    # The endpoint's function name: `start_job`, not `start_job_api_v1_jobs__job_id__start_post`.
    return route.name


def create_app(
    settings: Settings,
    *,
    keyd: KeydControl | None = None,
    database: Database | None = None,
    keyd_watch_interval_s: float | None = PING_INTERVAL_S,
    lost_worker_sweep: bool = True,
    worker_lane: bool = True,
) -> FastAPI:
    """The API app. `keyd_watch_interval_s=None` turns the keyd watch off (tests that
    drive `KeydSync.check` themselves); `lost_worker_sweep=False` the periodic sweep of
    lost workers' jobs (tests that call `JobService.sweep_lost` themselves);
    `worker_lane=False` the worker lane (`worker_lane`), so that its tests can compare
    its answers with the FastAPI routes' own."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncGenerator[dict[str, Any]]:
        own_database = database is None
        own_keyd = keyd is None
        client = keyd if keyd is not None else KeydControlClient(settings.keyd)
        db = database if database is not None else open_database(settings)
        keyd_sync = KeydSync(
            db, client, cache_ttl_s=settings.keyd.cache_ttl_s, node=settings.api.node
        )
        authenticator = Authenticator(db)
        wakeups = job_wakeups(db)
        await wakeups.start()
        job_service = JobService(
            db,
            keyd_sync,
            wakeups,
            node=settings.api.node,
            cache_ttl_s=settings.keyd.cache_ttl_s,
            worker_timeout_s=settings.api.worker_timeout_s,
            max_log_bytes=settings.api.max_log_bytes,
        )
        tasks: list[asyncio.Task[None]] = []
        if keyd_watch_interval_s is not None:
            tasks.append(
                asyncio.create_task(keyd_sync.watch(keyd_watch_interval_s), name="keyd-watch")
            )
        if lost_worker_sweep:
            interval = sweep_interval_s(settings.api.worker_timeout_s)
            tasks.append(
                asyncio.create_task(job_service.sweep_forever(interval), name="lost-worker-sweep")
            )
        try:
            # Copied into every request's `request.state`; `deps` reads them there.
            yield {
                "database": db,
                "authenticator": authenticator,
                "keyd": client,
                "keyd_sync": keyd_sync,
                "job_service": job_service,
                "secret_service": SecretService(db, client),
            }
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await keyd_sync.aclose()
            await wakeups.stop()
            await authenticator.aclose()
            if own_keyd:
                await client.close()
            if own_database:
                await db.dispose()

    app = FastAPI(
        title="Danube",
        summary="Self-hosted CI/CD control plane: teams, pipelines, jobs, write-only secrets",
        version=API_VERSION,
        lifespan=lifespan,
        # Danube logs its own JSON lines; no OpenTelemetry provider is configured, so
        # FastAPI's native telemetry would only cost a check per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,
        redoc_url=None,
        responses=problem_responses(500),
        generate_unique_id_function=_operation_id,
    )
    install_problem_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # The web page for people (DESIGN 16), beside the JSON API.
    install_web(app)
    # The last added runs first: the request context wraps everything, 413s included;
    # the worker lane runs inside both, on the routes it stands for.
    if worker_lane:
        app.add_middleware(WorkerLane)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(RequestContextMiddleware)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            schema = describe_access(use_problem_media_type(schema), app.routes)
            app.openapi_schema = describe_links(schema)
        return app.openapi_schema

    app.openapi = openapi
    return app
