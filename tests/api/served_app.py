"""Run an ASGI app's lifespan in-process (asgi-lifespan), and talk to it with httpx, as a
server would; `state_of(client)` is what the lifespan yielded, as every request sees it."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Receive, Scope, Send

_STATES: weakref.WeakKeyDictionary[httpx.AsyncClient, dict[str, Any]] = weakref.WeakKeyDictionary()


class _StateProbe:
    """Keeps the lifespan scope's `state`: the dict the lifespan's yield fills."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.state = scope["state"]
        await self.app(scope, receive, send)


@asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on `app`, with the app's lifespan started before and stopped after."""
    probe = _StateProbe(app)
    async with LifespanManager(probe) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://danube.test") as client:
            _STATES[client] = probe.state
            yield client


def state_of(client: httpx.AsyncClient) -> dict[str, Any]:
    """What the lifespan of the app behind `client` (from `serve`) yielded."""
    return _STATES[client]
