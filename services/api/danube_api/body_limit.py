"""A cap on request bodies, answered with a 413 problem.

A pure ASGI middleware: a body whose `Content-Length` is over the cap is refused before
the app reads anything; a body without one (chunked) is counted as it is received, and
reading past the cap raises a 413 that the problem handlers render. (Starlette's own
limit answers in plain text, and unwinds by exceptions that other middleware would see as
failures.)
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from danube_api.problems import ProblemResponse, problem


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes"


def _declared_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            response = ProblemResponse(
                problem(413, "content_too_large", "Content too large", _too_large(limit))
            )
            await response(scope, receive, send)
            return
        if declared is not None:
            # The server delivers no more than the declared length.
            await self.app(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, receive_within_limit, send)
