"""`danube-api`: check the schema is at head, then serve the API with uvicorn.

The API never serves a schema that is not at the migration head. At start it waits up to
`SCHEMA_WAIT_S` for the database to reach head, so that it can start beside the migrator
(as `danube up` and supervisord start them) and spend its import time while the
migration runs; if the schema is still not at head by then, it logs why and exits 1, and
supervisord starts it again later.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import signal
import time
from collections.abc import Sequence
from types import FrameType

import uvicorn

from danube_api.app import create_app
from danube_api.http_guard import GuardedHttpToolsProtocol
from danube_shared.config import Settings
from danube_shared.db.engine import Database
from danube_shared.db.schema_head import ensure_at_head
from danube_shared.errors import DanubeError
from danube_shared.logs import get_logger
from danube_shared.program import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    program_parser,
    start_program,
)

PROG = "danube-api"
SCHEMA_WAIT_S = 10.0
# Open connections (and requests in flight) beyond this are answered 503 by uvicorn.
MAX_CONNECTIONS = 1024
# Short, as every look is cheap: the API serves soon after the migrator commits.
_SCHEMA_POLL_S = 0.02
log = get_logger(__name__)


async def wait_for_schema(settings: Settings, wait_s: float = SCHEMA_WAIT_S) -> str:
    """The head revision, once the database is at it; the last `DanubeError` if it is
    not within `wait_s` seconds.

    One engine serves every look, so that a look costs a query, not an engine and a
    connection: the API polls while the migrator runs beside it, on the same cores."""
    deadline = time.monotonic() + wait_s
    waiting = False
    database = Database.open(settings.database)
    try:
        while True:
            try:
                return (await ensure_at_head(database.engine)).head
            except DanubeError as exc:
                if time.monotonic() >= deadline:
                    raise
                if not waiting:
                    log.info("waiting for the schema to reach head", detail=exc.message)
                    waiting = True
            await asyncio.sleep(_SCHEMA_POLL_S)
    finally:
        await database.dispose()


def _stop_already_handled(_signum: int, _frame: FrameType | None) -> None:
    """uvicorn handles SIGINT and SIGTERM while it serves, then raises the signal again
    under the handlers it found, so that a default handler ends the process by it. The
    graceful stop is complete by then: `main` returns and the program exits 0."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_refusal(settings: Settings) -> str | None:
    """Why the API must not serve on `api.host` as configured (DESIGN 7), or None: a
    non-loopback address needs TLS or an explicit `api.insecure_http`, since every
    request carries a bearer token."""
    api = settings.api
    if is_loopback(api.host) or api.insecure_http:
        return None
    if api.tls_cert is not None and api.tls_key is not None:
        return None
    return (
        f"api.host {api.host} is not a loopback address: set api.tls_cert and api.tls_key "
        "(PEM files) to serve HTTPS, or api.insecure_http = true to allow plain HTTP"
    )


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    tls = settings.api.tls_cert is not None and settings.api.tls_key is not None
    return uvicorn.Config(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        loop="uvloop",
        # httptools bounds no request head: `GuardedHttpToolsProtocol` answers a head
        # over 64 KiB with 431 and drops a client that takes over 10 s to send one
        # (h11, which can bound a head itself, cost a third of api_create_job's rate).
        http=GuardedHttpToolsProtocol,
        limit_concurrency=MAX_CONNECTIONS,
        ssl_certfile=settings.api.tls_cert if tls else None,
        ssl_keyfile=settings.api.tls_key if tls else None,
        ws="none",
        lifespan="on",
        # Logging is already configured; uvicorn's records reach our JSON renderer.
        log_config=None,
        # One summary line per request comes from RequestContextMiddleware instead.
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )


def keep_startup_objects_out_of_gc() -> None:
    """Move every object alive now (modules, the app, its routes and schemas: what
    lives as long as the process) out of the garbage collector's sight, and turn the
    collector on (`danube_api.entry` paused it for the import).

    A full collection otherwise walks all of them, on the event loop, while every request
    in flight waits: with 32 clients one such pause lands in 2% of the answers, which is
    exactly the p99 of `api_write_tail`. There is no collection first: after the import
    it found about 800 unreachable objects among 180,000 and cost about 80 ms, on the way
    to ready; those few stay frozen."""
    gc.freeze()
    gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    parser = program_parser(PROG, "The Danube HTTP API.")
    parser.add_argument(
        "--schema-wait",
        type=float,
        default=SCHEMA_WAIT_S,
        metavar="SECONDS",
        help=f"how long to wait for the schema to reach head (default {SCHEMA_WAIT_S:g})",
    )
    args = parser.parse_args(argv)
    settings = start_program(PROG, args.config)
    refusal = transport_refusal(settings)
    if refusal is not None:
        log.error("not serving: plain HTTP on a non-loopback address", detail=refusal)
        return EXIT_USAGE
    # The app is built and the start-up objects frozen before the schema wait, so that
    # both overlap the migrator instead of following it (about 70 ms of CPU).
    config = uvicorn_config(settings)
    keep_startup_objects_out_of_gc()
    try:
        head = asyncio.run(wait_for_schema(settings, max(args.schema_wait, 0.0)))
    except DanubeError as exc:
        log.error(  # noqa: TRY400 -- an expected state whose message says what to do; no traceback
            "not serving: the database is not ready", error=exc.code, detail=exc.message
        )
        return EXIT_FAILURE
    log.info("schema at head", revision=head, database=str(settings.database.path))
    server = uvicorn.Server(config)
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _stop_already_handled)
    try:
        server.run()
    except SystemExit:
        # uvicorn exits 3 when start-up fails (port taken, lifespan failed); it has
        # logged why. Danube's programs exit 1 on a runtime failure.
        return EXIT_FAILURE
    return EXIT_OK if server.started else EXIT_FAILURE
