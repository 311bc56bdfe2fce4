"""Turning a template and its values into the HTML response every page sends.

Jinja2 escapes every value (autoescape is on for `.html`), so a name such as `<script>`
is shown as text. Every page carries headers that keep it to its own origin: scripts and
styles only from `/static`, no framing, no caching of a page that lists a team's objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fastapi import Request
from fastapi.responses import HTMLResponse

if TYPE_CHECKING:
    from fastapi.templating import Jinja2Templates

PACKAGE_DIR: Final = Path(__file__).resolve().parent.parent
TEMPLATE_DIR: Final = PACKAGE_DIR / "templates"
STATIC_DIR: Final = PACKAGE_DIR / "static"

PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


class PageRenderer:
    """The page templates; one per app, kept on `app.state.web_pages`.

    Jinja2 is imported and its environment built at the first page, not at start: the API
    is ready sooner (`danube up`'s start, DESIGN 10), and JSON clients never pay for it."""

    def __init__(self) -> None:
        self._loaded: Jinja2Templates | None = None

    @property
    def _templates(self) -> Jinja2Templates:
        if self._loaded is None:
            from fastapi.templating import Jinja2Templates

            self._loaded = Jinja2Templates(directory=TEMPLATE_DIR)
        return self._loaded

    def render(
        self, request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
    ) -> HTMLResponse:
        response = self._templates.TemplateResponse(
            request, name, context, status_code=status_code, headers=PAGE_HEADERS
        )
        assert isinstance(response, HTMLResponse)  # noqa: S101 -- Jinja2Templates always answers HTML
        return response


def renderer_of(request: Request) -> PageRenderer:
    renderer: PageRenderer = request.app.state.web_pages
    return renderer
