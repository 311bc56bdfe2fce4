"""Run an ASGI app's lifespan in-process, and talk to it with httpx, as a server would.

httpx's `ASGITransport` sends requests only; a server also runs the lifespan and hands
each request a copy of the state the lifespan yielded (`scope["state"]`). `LifespanRunner`
does both, so the app under test runs exactly as under uvicorn, without a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class LifespanRunner:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(self.state)}
        await self.app(scope, receive, send)

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}

        async def run() -> None:
            await self.app(scope, self._to_app.get, self._from_app.put)

        self._task = asyncio.create_task(run())
        await self._to_app.put({"type": "lifespan.startup"})
        reply = await self._from_app.get()
        if reply["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"lifespan startup failed: {reply}")

    async def shutdown(self) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        reply = await self._from_app.get()
        assert self._task is not None
        await self._task
        if reply["type"] != "lifespan.shutdown.complete":
            raise RuntimeError(f"lifespan shutdown failed: {reply}")


@asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on `app`, with the app's lifespan started before and stopped after."""
    runner = LifespanRunner(app)
    await runner.startup()
    try:
        transport = httpx.ASGITransport(app=runner)
        async with httpx.AsyncClient(transport=transport, base_url="http://danube.test") as client:
            yield client
    finally:
        await runner.shutdown()
