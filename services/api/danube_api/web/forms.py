"""Reading the pages' forms and checking their CSRF token.

Forms are `application/x-www-form-urlencoded`, parsed here with the standard library
(Starlette's form parser needs python-multipart, which nothing else here needs). A field's
value is never put into an error: the value of the secret form is a secret.
"""

from __future__ import annotations

import hmac
from typing import Final
from urllib.parse import parse_qs

from fastapi import Request

from danube_shared.errors import Forbidden, InvalidInput

CSRF_FIELD: Final = "csrf_token"
_FORM_TYPE: Final = "application/x-www-form-urlencoded"
_MAX_FIELDS: Final = 16


async def read_form(request: Request) -> dict[str, str]:
    """The form's fields (the first value of each). A body that is not a form has no
    fields, hence no CSRF token: `check_csrf` then refuses it with 403."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != _FORM_TYPE:
        return {}
    body = await request.body()
    try:
        fields = parse_qs(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=_MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the form could not be read") from None
    return {name: values[0] for name, values in fields.items()}


def check_csrf(form: dict[str, str], expected: str | None) -> None:
    """403 unless the form carries the expected CSRF token."""
    presented = form.get(CSRF_FIELD)
    if (
        not expected
        or presented is None
        or not hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))
    ):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page and retry")
