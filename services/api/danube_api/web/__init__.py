"""The web page for people (DESIGN 16): server-rendered HTML under `/`, with the same
permissions as the JSON API under `/api/v1`.

`install_web(app)` adds the pages, the endpoints their script polls, the static files and
the in-memory session store to an app built by `create_app`.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from danube_api.web import live, pages
from danube_api.web.rendering import STATIC_DIR, PageRenderer
from danube_api.web.sessions import SessionStore


def install_web(app: FastAPI) -> None:
    app.state.web_sessions = SessionStore()
    app.state.web_pages = PageRenderer()
    app.include_router(pages.router)
    app.include_router(live.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
