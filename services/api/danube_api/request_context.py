"""Per-request context: the request id and the one summary log line of each request.

A pure ASGI middleware (no `BaseHTTPMiddleware`: it would run every request through an
extra task and memory stream). It takes the caller's `X-Request-ID` when it is short and
plain, else makes one; binds it into structlog's contextvars for everything the request
logs; echoes it in the response; and, when the request ends, logs one line with the
method, the route's path template, the status and the duration. An exception that no
handler turned into a response is logged here, with the request id, and answered with a
generic 500 problem that holds none of its text.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Final

import structlog
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from danube_api.problems import PROBLEM_MEDIA_TYPE, internal_problem
from danube_shared.logs import get_logger

REQUEST_ID_HEADER: Final = "X-Request-ID"
_HEADER_KEY: Final = REQUEST_ID_HEADER.lower().encode("ascii")
_VALID_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Paths that match no route are logged as given, cut to this length.
_MAX_LOGGED_PATH: Final = 200

log = get_logger(__name__)
_INTERNAL_BODY: Final = internal_problem().model_dump_json(exclude_none=True).encode()


def request_id_from(scope: Scope) -> str:
    """The caller's `X-Request-ID` if it is 1..64 plain characters, else a fresh one."""
    for key, value in scope["headers"]:
        if key == _HEADER_KEY:
            if _VALID_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


def _path_template(scope: Scope) -> str:
    route = scope.get("route")
    if isinstance(route, BaseRoute):
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
    raw: str = scope.get("path", "")
    return raw[:_MAX_LOGGED_PATH]


class RequestContextMiddleware:
    """Request id, summary log line and last-resort 500 for every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope)
        echoed = (_HEADER_KEY, request_id.encode("ascii"))
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", method=scope["method"], path=_path_template(scope))
            if status == 0:
                await _send_internal_error(send_with_id)
            status = status or 500
        finally:
            log.info(
                "request",
                method=scope["method"],
                path=_path_template(scope),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            structlog.contextvars.reset_contextvars(**bound)


async def _send_internal_error(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode("ascii")),
                (b"content-length", str(len(_INTERNAL_BODY)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _INTERNAL_BODY})
