"""The team, pipeline and job pages: the same permissions as the JSON API (another
team's objects answer 404), a write-only secret form for maintainers, Run and Cancel
behind the CSRF token, names escaped, and no token or secret value in any page."""

from __future__ import annotations

import httpx
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.repositories import PipelineRepository, TeamRepository
from danube_shared.db.schema import Job, Status, TeamRole
from tests.api.fake_keyd import FakeKeyd
from tests.web.conftest import STEPS, World, sign_in

SECRET_VALUE = "hunter2-very-secret-value"  # noqa: S105 -- the value the pages must never show


async def _run(client: httpx.AsyncClient, pipeline_id: str, csrf: str) -> str:
    response = await client.post(f"/pipelines/{pipeline_id}/run", data={"csrf_token": csrf})
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith("/jobs/")
    return location.removeprefix("/jobs/")


async def test_a_member_sees_the_team_page_without_the_secret_form(
    client: httpx.AsyncClient, world: World
) -> None:
    await sign_in(client, world.member.token)
    page = await client.get(f"/teams/{world.red_id}")
    assert page.status_code == 200
    assert f'href="/pipelines/{world.build_id}"' in page.text
    for username in ("olga", "mia", "max"):
        assert f"<td>{username}</td>" in page.text
    assert "bob" not in page.text
    assert "Set a secret" not in page.text


async def test_a_maintainer_sees_the_write_only_secret_form(
    client: httpx.AsyncClient, world: World
) -> None:
    await sign_in(client, world.maintainer.token)
    page = await client.get(f"/teams/{world.red_id}")
    assert "Set a secret" in page.text
    assert f'action="/teams/{world.red_id}/secrets"' in page.text


async def test_another_teams_pages_answer_404(client: httpx.AsyncClient, world: World) -> None:
    csrf = await sign_in(client, world.member.token)
    for path in (f"/teams/{world.blue_id}", f"/pipelines/{world.deploy_id}"):
        page = await client.get(path)
        assert page.status_code == 404, path
        assert "text/html" in page.headers["content-type"]
        assert "deploy" not in page.text
    run = await client.post(f"/pipelines/{world.deploy_id}/run", data={"csrf_token": csrf})
    assert run.status_code == 404


async def test_another_teams_job_page_and_live_endpoints_answer_404(
    client: httpx.AsyncClient, world: World
) -> None:
    csrf = await sign_in(client, world.outsider.token)
    job_id = await _run(client, world.deploy_id, csrf)
    await sign_in(client, world.member.token)
    for path in (
        f"/jobs/{job_id}",
        f"/jobs/{job_id}/status.json",
        f"/jobs/{job_id}/steps/0/log?offset=0",
    ):
        assert (await client.get(path)).status_code == 404, path
    cancel = await client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf})
    assert cancel.status_code == 404


async def test_a_missing_id_answers_404_like_another_teams(
    client: httpx.AsyncClient, world: World
) -> None:
    await sign_in(client, world.member.token)
    page = await client.get("/teams/00000000-0000-0000-0000-000000000000")
    assert page.status_code == 404


async def test_a_site_admin_sees_every_teams_pages(client: httpx.AsyncClient, world: World) -> None:
    await sign_in(client, world.admin.token)
    assert (await client.get(f"/teams/{world.blue_id}")).status_code == 200
    page = await client.get(f"/pipelines/{world.deploy_id}")
    assert page.status_code == 200
    assert '<button type="submit">Run</button>' in page.text


async def test_a_maintainer_sets_a_secret_and_only_its_name_is_shown(
    client: httpx.AsyncClient, world: World, fake_keyd: FakeKeyd
) -> None:
    csrf = await sign_in(client, world.maintainer.token)
    response = await client.post(
        f"/teams/{world.red_id}/secrets",
        data={"csrf_token": csrf, "name": "DEPLOY_KEY", "value": SECRET_VALUE},
    )
    assert response.status_code == 303, response.text
    assert SECRET_VALUE not in response.text
    page = await client.get(response.headers["location"])
    assert "<code>DEPLOY_KEY</code>" in page.text
    assert "Secret DEPLOY_KEY saved." in page.text
    assert SECRET_VALUE not in page.text
    # The value reached keyd, encrypted: it is stored, not lost.
    assert fake_keyd.calls.count("encrypt") == 1


async def test_a_member_cannot_set_a_secret(client: httpx.AsyncClient, world: World) -> None:
    csrf = await sign_in(client, world.member.token)
    response = await client.post(
        f"/teams/{world.red_id}/secrets",
        data={"csrf_token": csrf, "name": "DEPLOY_KEY", "value": SECRET_VALUE},
    )
    assert response.status_code == 403
    assert SECRET_VALUE not in response.text
    page = await client.get(f"/teams/{world.red_id}")
    assert "DEPLOY_KEY" not in page.text


async def test_setting_a_secret_without_the_csrf_token_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    await sign_in(client, world.maintainer.token)
    response = await client.post(
        f"/teams/{world.red_id}/secrets", data={"name": "DEPLOY_KEY", "value": SECRET_VALUE}
    )
    assert response.status_code == 403
    assert "CSRF" in response.text
    assert SECRET_VALUE not in response.text
    assert "DEPLOY_KEY" not in (await client.get(f"/teams/{world.red_id}")).text


async def test_an_invalid_secret_name_is_refused_without_echoing_the_value(
    client: httpx.AsyncClient, world: World
) -> None:
    csrf = await sign_in(client, world.maintainer.token)
    response = await client.post(
        f"/teams/{world.red_id}/secrets",
        data={"csrf_token": csrf, "name": "1 bad name", "value": SECRET_VALUE},
    )
    assert response.status_code == 422
    assert SECRET_VALUE not in response.text


async def test_run_without_the_csrf_token_is_refused(
    client: httpx.AsyncClient, world: World, database: Database
) -> None:
    await sign_in(client, world.member.token)
    response = await client.post(f"/pipelines/{world.build_id}/run", data={})
    assert response.status_code == 403
    page = await client.get(f"/pipelines/{world.build_id}")
    assert "No jobs yet" in page.text


async def test_run_makes_a_job_whose_page_shows_each_step_and_its_log(
    client: httpx.AsyncClient, world: World
) -> None:
    csrf = await sign_in(client, world.member.token)
    job_id = await _run(client, world.build_id, csrf)
    page = await client.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert page.text.count('role="log"') == len(STEPS)
    assert 'aria-label="Log of compile"' in page.text
    assert '<span class="status status-pending" >pending</span>' in page.text
    assert '<button type="submit" class="danger">Cancel</button>' in page.text
    pipeline = await client.get(f"/pipelines/{world.build_id}")
    assert f'href="/jobs/{job_id}">#1</a>' in pipeline.text


def _job_status(session: Session, job_id: str) -> tuple[Status, bool]:
    job = session.get(Job, job_id)
    assert job is not None
    return job.status, job.cancel_requested


async def test_cancel_cancels_a_pending_job_and_the_button_goes(
    client: httpx.AsyncClient, world: World, database: Database
) -> None:
    csrf = await sign_in(client, world.member.token)
    job_id = await _run(client, world.build_id, csrf)
    response = await client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert (await database.read(_job_status, job_id))[0] == Status.CANCELLED
    page = await client.get(f"/jobs/{job_id}")
    assert "status-cancelled" in page.text
    assert ">Cancel</button>" not in page.text
    again = await client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf})
    assert again.status_code == 409


async def test_cancel_without_the_csrf_token_is_refused(
    client: httpx.AsyncClient, world: World, database: Database
) -> None:
    csrf = await sign_in(client, world.member.token)
    job_id = await _run(client, world.build_id, csrf)
    response = await client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf + "x"})
    assert response.status_code == 403
    assert await database.read(_job_status, job_id) == (Status.PENDING, False)


def _hostile_names(session: Session, owner_id: str) -> tuple[str, str]:
    teams = TeamRepository(session)
    team = teams.create(name="<b>bold</b>")
    teams.put_member(team.id, owner_id, TeamRole.OWNER)
    pipeline = PipelineRepository(session).create(
        team.id,
        name="<script>alert(1)</script>",
        steps=[{"name": "<img src=x onerror=alert(2)>", "command": "echo '<i>'"}],
    )
    return team.id, pipeline.id


async def test_names_render_as_text_not_markup(
    client: httpx.AsyncClient, world: World, database: Database
) -> None:
    team_id, pipeline_id = await database.write(_hostile_names, world.member.user_id)
    csrf = await sign_in(client, world.member.token)
    job_id = await _run(client, pipeline_id, csrf)
    pages = [
        (await client.get(path)).text
        for path in ("/", f"/teams/{team_id}", f"/pipelines/{pipeline_id}", f"/jobs/{job_id}")
    ]
    for html in pages:
        assert "<script>alert" not in html
        assert "<img src=x" not in html
        assert "<b>bold" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in pages[0]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[2]
    assert "&lt;img src=x onerror=alert(2)&gt;" in pages[3]


async def test_no_page_contains_a_token_or_a_secret_value(
    client: httpx.AsyncClient, world: World
) -> None:
    csrf = await sign_in(client, world.maintainer.token)
    await client.post(
        f"/teams/{world.red_id}/secrets",
        data={"csrf_token": csrf, "name": "DEPLOY_KEY", "value": SECRET_VALUE},
    )
    job_id = await _run(client, world.build_id, csrf)
    responses = [
        await client.get(path)
        for path in (
            "/",
            f"/teams/{world.red_id}",
            f"/pipelines/{world.build_id}",
            f"/jobs/{job_id}",
            f"/jobs/{job_id}/status.json",
            f"/teams/{world.blue_id}",
        )
    ]
    tokens = [
        person.token
        for person in (world.admin, world.owner, world.maintainer, world.member, world.outsider)
    ]
    for response in responses:
        for forbidden in [SECRET_VALUE, world.worker_token, *tokens]:
            assert forbidden not in response.text, response.url
        assert "dnb_" not in response.text


async def test_pages_carry_a_strict_content_security_policy(
    client: httpx.AsyncClient, world: World
) -> None:
    await sign_in(client, world.member.token)
    page = await client.get(f"/teams/{world.red_id}")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["cache-control"] == "no-store"
