"""The route class of the HTML pages: an error becomes a page, not a problem document.

A page that needs a session and has none shows the sign-in form (a redirect to `/`); a
domain error is shown with its status and its message, which are written to be shown and
never hold an input value. The JSON endpoints the page's script polls keep the API's
problem responses.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute

from danube_api.problems import domain_problem
from danube_api.web.rendering import PAGE_HEADERS, renderer_of
from danube_api.web.signed_in import SignInNeeded, current_session
from danube_shared.errors import DanubeError


class PageRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInNeeded:
                return RedirectResponse("/", status_code=303, headers=PAGE_HEADERS)
            except DanubeError as error:
                problem = domain_problem(error)
                return await error_page(request, problem.status, problem.title, problem.detail)
            except RequestValidationError:
                return await error_page(
                    request, 400, "Bad request", "the address or the form is not valid"
                )

        return page_handler


async def error_page(request: Request, status: int, title: str, detail: str) -> Response:
    signed_in = None
    if status not in (401, 503):
        # Best effort: the header shows who is signed in; a failing lookup shows nobody.
        try:
            signed_in = await current_session(request)
        except DanubeError:
            signed_in = None
    return renderer_of(request).render(
        request,
        "error.html",
        {
            "signed_in": signed_in,
            "csrf_token": signed_in.session.csrf_token if signed_in is not None else None,
            "title": title,
            "detail": detail,
            "status": status,
        },
        status_code=status,
    )
