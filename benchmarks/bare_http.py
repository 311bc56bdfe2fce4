"""The HTTP baseline: a bare `GET /ping` served by the same stack as the API (FastAPI on
uvicorn with uvloop and httptools, access log off, the same JSON logging).

Run as `python -m benchmarks.bare_http PORT`.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI, Request

from danube_shared.config import LogSettings
from danube_shared.logs import configure_logging


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:  # pyright: ignore[reportUnusedFunction] -- registered route
        return {"ok": True}

    @app.post("/discard")
    async def discard(request: Request) -> dict[str, int]:  # pyright: ignore[reportUnusedFunction] -- registered route
        # The log route's baseline: read the whole body, keep nothing, say its length.
        return {"length": len(await request.body())}

    return app


def main() -> None:
    configure_logging(LogSettings(level="warn"), "bare-http")
    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
