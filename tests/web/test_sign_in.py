"""Signing in and out of the web page: a user's API token becomes a server-side session
behind a cookie with the right flags; every form needs its CSRF token."""

from __future__ import annotations

import httpx
from sqlalchemy.orm import Session

from danube_api.web.signed_in import SESSION_COOKIE
from danube_shared.db.engine import Database
from danube_shared.db.repositories import TokenRepository
from danube_shared.db.timestamps import utcnow
from tests.web.conftest import World, csrf_of, sign_in


async def test_the_sign_in_form_has_the_api_token_field_and_the_sign_in_button(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<label for="token">API token</label>' in page.text
    assert '<input id="token" name="token" type="password"' in page.text
    assert '<button type="submit">Sign in</button>' in page.text


async def test_signing_in_sets_an_httponly_samesite_strict_session_cookie(
    client: httpx.AsyncClient, world: World
) -> None:
    form = await client.get("/")
    response = await client.post(
        "/sign-in", data={"token": world.member.token, "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    (cookie,) = [
        header
        for header in response.headers.get_list("set-cookie")
        if header.startswith(SESSION_COOKIE + "=")
    ]
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert "secure" not in flags  # plain HTTP here; see the TLS test
    assert world.member.token not in cookie


async def test_the_session_cookie_is_secure_under_tls(
    client: httpx.AsyncClient, world: World
) -> None:
    # An absolute https URL: the app sees the request's scheme as https, as behind TLS.
    form = await client.get("https://danube.test/")
    response = await client.post(
        "https://danube.test/sign-in",
        data={"token": world.member.token, "csrf_token": csrf_of(form.text)},
    )
    assert response.status_code == 303
    cookie = next(
        header
        for header in response.headers.get_list("set-cookie")
        if header.startswith(SESSION_COOKIE + "=")
    )
    assert "secure" in {part.strip().lower() for part in cookie.split(";")[1:]}


async def test_signed_in_the_home_page_lists_the_callers_teams_only(
    client: httpx.AsyncClient, world: World
) -> None:
    await sign_in(client, world.member.token)
    page = await client.get("/")
    assert f'href="/teams/{world.red_id}"' in page.text
    assert f'href="/teams/{world.blue_id}"' not in page.text
    assert "Signed in as <strong>max</strong>" in page.text


async def test_a_site_admin_sees_every_team(client: httpx.AsyncClient, world: World) -> None:
    await sign_in(client, world.admin.token)
    page = await client.get("/")
    assert f'href="/teams/{world.red_id}"' in page.text
    assert f'href="/teams/{world.blue_id}"' in page.text


async def test_sign_in_without_the_csrf_token_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    await client.get("/")
    response = await client.post("/sign-in", data={"token": world.member.token})
    assert response.status_code == 403
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert world.member.token not in response.text


async def test_sign_in_with_a_csrf_token_of_another_form_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    await client.get("/")
    response = await client.post(
        "/sign-in", data={"token": world.member.token, "csrf_token": "forged"}
    )
    assert response.status_code == 403


async def test_a_worker_token_cannot_sign_in(client: httpx.AsyncClient, world: World) -> None:
    form = await client.get("/")
    response = await client.post(
        "/sign-in", data={"token": world.worker_token, "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 401
    assert "A worker token cannot sign in" in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert world.worker_token not in response.text


async def test_an_unknown_token_cannot_sign_in_and_is_not_echoed(
    client: httpx.AsyncClient, world: World
) -> None:
    form = await client.get("/")
    wrong = world.member.token[:-4] + "zzzz"
    response = await client.post(
        "/sign-in", data={"token": wrong, "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 401
    assert "unknown, revoked or expired" in response.text
    assert wrong not in response.text


async def test_signing_out_ends_the_session_on_the_server(
    client: httpx.AsyncClient, world: World
) -> None:
    csrf = await sign_in(client, world.member.token)
    session_id = client.cookies[SESSION_COOKIE]
    response = await client.post("/sign-out", data={"csrf_token": csrf})
    assert response.status_code == 303
    # The old cookie, replayed, opens nothing: the session is gone from the server.
    client.cookies.set(SESSION_COOKIE, session_id)
    page = await client.get(f"/teams/{world.red_id}")
    assert page.status_code == 303
    assert page.headers["location"] == "/"


async def test_sign_out_without_the_csrf_token_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    await sign_in(client, world.member.token)
    response = await client.post("/sign-out", data={})
    assert response.status_code == 403
    assert (await client.get(f"/teams/{world.red_id}")).status_code == 200


def _revoke(session: Session, user_id: str) -> None:
    tokens = TokenRepository(session)
    for token in tokens.list_for_user(user_id):
        tokens.revoke_for_user(user_id, token.id, now=utcnow())


async def test_revoking_the_token_ends_its_sessions(
    client: httpx.AsyncClient, world: World, database: Database
) -> None:
    await sign_in(client, world.member.token)
    await database.write(_revoke, world.member.user_id)
    page = await client.get(f"/teams/{world.red_id}")
    assert page.status_code == 303
    assert page.headers["location"] == "/"


async def test_a_page_without_a_session_sends_to_the_sign_in_form(
    client: httpx.AsyncClient, world: World
) -> None:
    for path in (
        f"/teams/{world.red_id}",
        f"/pipelines/{world.build_id}",
        "/jobs/00000000-0000-0000-0000-000000000000",
    ):
        response = await client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/"
