"""The worker lane (`danube_api.worker_lane`) answers exactly as the FastAPI routes it
stands for.

Each scenario runs twice on the same database: once through an app with the lane, and
once through an app without it (`worker_lane=False`: the routes' own answers). The lane
app's FastAPI worker rules fail if they are ever called, so each answer compared there is
the lane's own. Apart from ids, tokens and timestamps, which differ from run to run and
are replaced by placeholders, the answers must match byte for byte: status,
`Content-Type`, `WWW-Authenticate` and body. Requests the lane declines run through a
lane app without that trap, and must match the routes' answers as well.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_args

import httpx
import pytest

from danube_api.access import PipelineMember, any_worker, job_worker_in_write
from danube_api.app import create_app
from danube_shared.config import DatabaseSettings, Settings
from danube_shared.db.engine import Database
from danube_shared.tokens import TokenKind, new_token
from tests.api.callers import Headers, bearer, make_admin, make_user, make_worker
from tests.api.conftest import CapturedLogs, api_settings, send_without_token, serve_as_admin
from tests.api.fake_keyd import FakeKeyd

# Small, so that one scenario can fill a step's log.
MAX_LOG_BYTES = 1024
MIB = 1024 * 1024
# Text that JSON encoders escape differently if they differ at all.
AWKWARD = 'é "quoted" \\ back\tslash \x1f ctl \u2028 sep 🚀 </script>'


@pytest.fixture
def settings(database_settings: DatabaseSettings) -> Settings:
    settings = api_settings(database_settings, cache_ttl_s=600)
    return settings.model_copy(
        update={"api": settings.api.model_copy(update={"max_log_bytes": MAX_LOG_BYTES})}
    )


async def _route_ran() -> None:
    raise AssertionError("the lane left a request to its FastAPI route")


@dataclass(frozen=True)
class Apps:
    lane: httpx.AsyncClient  # the lane, its routes' worker rules trapped
    declining: httpx.AsyncClient  # the lane, the routes open for what it declines
    routes: httpx.AsyncClient  # no lane: FastAPI's routes answer
    keyd: FakeKeyd
    database: Database


@pytest.fixture
async def apps(settings: Settings, fake_keyd: FakeKeyd, database: Database) -> AsyncIterator[Apps]:
    def app(*, lane: bool) -> Any:
        return create_app(
            settings,
            keyd=fake_keyd,
            database=database,
            keyd_watch_interval_s=None,
            lost_worker_sweep=False,
            worker_lane=lane,
        )

    trapped = app(lane=True)
    pipeline_member = get_args(PipelineMember)[1].dependency
    for rule in (any_worker, job_worker_in_write, pipeline_member):
        trapped.dependency_overrides[rule] = _route_ran
    async with (
        serve_as_admin(trapped, database) as lane,
        serve_as_admin(app(lane=True), database) as declining,
        serve_as_admin(app(lane=False), database) as routes,
    ):
        yield Apps(lane, declining, routes, fake_keyd, database)


class Placeholders:
    """Replaces each id, token and timestamp of one run's answers by a placeholder
    numbered in order of first appearance, so two runs' answers compare as bytes."""

    _PATTERN = re.compile(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
        r"|dnb_[uwj]_[A-Za-z0-9_-]+"
        r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?"
    )

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        return self._PATTERN.sub(self._name, text)

    def _name(self, match: re.Match[str]) -> str:
        found = match.group(0)
        if found not in self._seen:
            self._seen[found] = f"<{len(self._seen)}>"
        return self._seen[found]


def answers(responses: list[httpx.Response]) -> list[tuple[int, str | None, str | None, str]]:
    placeholders = Placeholders()
    return [
        (
            response.status_code,
            response.headers.get("content-type"),
            response.headers.get("www-authenticate"),
            placeholders(response.content.decode()),
        )
        for response in responses
    ]


@dataclass(frozen=True)
class Running:
    """A claimed job of a fresh two-step pipeline, its worker and another worker."""

    url: str
    worker: Headers
    other_worker: Headers
    admin: Headers


async def running_job(client: httpx.AsyncClient, database: Database) -> Running:
    tag = uuid.uuid4().hex[:12]
    admin = await make_admin(database, f"admin-{tag}")
    team = await client.post("/api/v1/teams", json={"name": f"team-{tag}"}, headers=admin)
    assert team.status_code == 201, team.text
    pipeline = await client.post(
        f"/api/v1/teams/{team.json()['id']}/pipelines",
        json={
            "name": "build",
            "steps": [
                {"name": f"compile {AWKWARD}", "command": f"make {AWKWARD}"},
                {"name": "test", "command": "make check"},
            ],
        },
        headers=admin,
    )
    assert pipeline.status_code == 201, pipeline.text
    created = await client.post(f"/api/v1/pipelines/{pipeline.json()['id']}/jobs", headers=admin)
    assert created.status_code == 201, created.text
    worker = await make_worker(database, f"worker-{tag}")
    other = await make_worker(database, f"other-{tag}")
    claimed = await client.post("/api/v1/worker/claim", headers=worker.headers)
    assert claimed.status_code == 200, claimed.text
    return Running(
        url=f"/api/v1/jobs/{claimed.json()['job']['id']}",
        worker=worker.headers,
        other_worker=other.headers,
        admin=admin,
    )


Scenario = Callable[[httpx.AsyncClient, Apps], Awaitable[list[httpx.Response]]]


async def same_answers(apps: Apps, scenario: Scenario, *, client: str = "lane") -> list[int]:
    """Run `scenario` through the lane app `client`, then without the lane; the answers
    must be the same. Returns their statuses."""
    through_lane = answers(await scenario(getattr(apps, client), apps))
    through_routes = answers(await scenario(apps.routes, apps))
    assert through_lane == through_routes
    return [status for status, *_ in through_lane]


# Answered by the lane


async def test_the_claim_answers_as_its_route(apps: Apps) -> None:
    async def scenario(client: httpx.AsyncClient, apps: Apps) -> list[httpx.Response]:
        tag = uuid.uuid4().hex[:12]
        worker = await make_worker(apps.database, f"claimer-{tag}")
        none_yet = await client.post("/api/v1/worker/claim?wait=0", headers=worker.headers)
        job = await running_job(client, apps.database)
        await client.post(f"{job.url}/finish", json={"status": "succeeded"}, headers=job.worker)
        pipeline_id = (await client.get(job.url, headers=job.admin)).json()["pipeline_id"]
        created = await client.post(f"/api/v1/pipelines/{pipeline_id}/jobs", headers=job.admin)
        assert created.status_code == 201
        claimed = await client.post("/api/v1/worker/claim?wait=1", headers=worker.headers)
        no_query = await client.post("/api/v1/worker/claim", headers=worker.headers)
        return [none_yet, claimed, no_query]

    assert await same_answers(apps, scenario) == [204, 200, 204]


async def test_the_claims_refusals_answer_as_its_route(apps: Apps) -> None:
    async def scenario(client: httpx.AsyncClient, apps: Apps) -> list[httpx.Response]:
        tag = uuid.uuid4().hex[:12]
        _, user = await make_user(apps.database, f"user-{tag}")
        revoked = await make_worker(apps.database, f"revoked-{tag}")
        # Used once, so the revocation must also reach the cached caller.
        await client.post("/api/v1/worker/claim", headers=revoked.headers)
        gone = await client.delete(f"/api/v1/workers/{revoked.worker_id}")
        assert gone.status_code == 204
        url = "/api/v1/worker/claim"
        return [
            await send_without_token(client, "POST", url),
            await client.post(url, headers={"Authorization": "Basic d29ya2VyOg=="}),
            await client.post(url, headers=bearer(new_token(TokenKind.WORKER))),
            await client.post(url, headers=bearer(new_token(TokenKind.JOB))),
            await client.post(url, headers=revoked.headers),
            await client.post(url, headers=user),
        ]

    assert await same_answers(apps, scenario) == [401, 401, 401, 401, 401, 403]


async def test_a_claim_keyd_cannot_serve_answers_as_its_route(apps: Apps) -> None:
    async def scenario(client: httpx.AsyncClient, apps: Apps) -> list[httpx.Response]:
        job = await running_job(client, apps.database)
        await client.post(f"{job.url}/finish", json={"status": "succeeded"}, headers=job.worker)
        pipeline_id = (await client.get(job.url, headers=job.admin)).json()["pipeline_id"]
        await client.post(f"/api/v1/pipelines/{pipeline_id}/jobs", headers=job.admin)
        apps.keyd.available = False
        try:
            refused = await client.post("/api/v1/worker/claim", headers=job.worker)
        finally:
            apps.keyd.available = True
        # The job went back to pending: the next claim takes it.
        claimed = await client.post("/api/v1/worker/claim", headers=job.worker)
        return [refused, claimed]

    assert await same_answers(apps, scenario) == [503, 200]


async def test_step_updates_answer_as_their_route(apps: Apps) -> None:
    async def scenario(client: httpx.AsyncClient, apps: Apps) -> list[httpx.Response]:
        job = await running_job(client, apps.database)
        steps = f"{job.url}/steps"
        return [
            await client.patch(f"{steps}/0", json={"status": "running"}, headers=job.worker),
            await client.patch(f"{steps}/0", json={"status": "running"}, headers=job.worker),
            await client.patch(
                f"{steps}/0", json={"status": "succeeded", "exit_code": 0}, headers=job.worker
            ),
            await client.patch(
                f"{steps}/1", json={"status": "failed", "exit_code": None}, headers=job.worker
            ),
            await client.patch(f"{steps}/7", json={"status": "running"}, headers=job.worker),
            await client.patch(f"{steps}/1", json={"status": "skipped"}, headers=job.other_worker),
            await client.patch(
                "/api/v1/jobs/no-such-job/steps/0", json={"status": "running"}, headers=job.worker
            ),
            await client.patch(f"{steps}/1", json={"status": "skipped"}, headers=job.admin),
            await client.patch(f"{steps}/1", json={"status": "skipped"}),
            await client.post(f"{job.url}/finish", json={"status": "failed"}, headers=job.worker),
            await client.patch(f"{steps}/1", json={"status": "skipped"}, headers=job.worker),
        ]

    statuses = await same_answers(apps, scenario)
    assert statuses[0] == 200
    assert statuses[2:4] == [200, 200]
    assert statuses[5:9] == [404, 404, 403, 403]
    assert statuses[10] == 409


async def test_log_appends_answer_as_their_route(apps: Apps) -> None:
    async def scenario(client: httpx.AsyncClient, apps: Apps) -> list[httpx.Response]:
        job = await running_job(client, apps.database)
        log = f"{job.url}/steps/0/log"
        octets = {"Content-Type": "application/octet-stream"}
        worker = {**job.worker, **octets}
        first = await client.post(f"{log}?offset=0", content=b"hello\n", headers=worker)
        await client.post(f"{job.url}/cancel", headers=job.admin)
        return [
            first,
            await client.post(f"{log}?offset=0", content=b"hello\n", headers=worker),
            await client.post(f"{log}?offset=100", content=b"gap", headers=worker),
            await client.post(f"{log}?offset=6", content=b"x" * (MIB + 1), headers=worker),
            await client.post(f"{log}?offset=6", content=b"x" * MAX_LOG_BYTES, headers=worker),
            await client.post(
                f"{log}?offset=6", content=b"x", headers={**job.other_worker, **octets}
            ),
            await client.post(f"{log}?offset=6", content=b"x", headers={**job.admin, **octets}),
            await send_without_token(client, "POST", f"{log}?offset=6", content=b"x"),
            await client.post(f"{job.url}/steps/9/log?offset=0", content=b"x", headers=worker),
            await client.post(f"{log}?offset=6", content=b"", headers=worker),
            await client.post(
                f"{job.url}/finish", json={"status": "cancelled"}, headers=job.worker
            ),
            await client.post(f"{log}?offset=6", content=b"late", headers=worker),
        ]

    statuses = await same_answers(apps, scenario)
    assert statuses[:8] == [200, 200, 409, 413, 413, 404, 403, 401]
    assert statuses[10:] == [200, 409]


async def test_heartbeats_answer_as_their_route(apps: Apps) -> None:
    async def scenario(client: httpx.AsyncClient, apps: Apps) -> list[httpx.Response]:
        job = await running_job(client, apps.database)
        beat = f"{job.url}/heartbeat"
        quiet = await client.post(beat, headers=job.worker)
        await client.post(f"{job.url}/cancel", headers=job.admin)
        return [
            quiet,
            await client.post(beat, headers=job.worker),
            await client.post(f"{beat}?ignored=1", headers=job.worker),
            await client.post(beat, headers=job.other_worker),
            await client.post("/api/v1/jobs/no-such-job/heartbeat", headers=job.worker),
            await client.post(beat, headers=job.admin),
            await send_without_token(client, "POST", beat),
            await client.post(
                f"{job.url}/finish", json={"status": "cancelled"}, headers=job.worker
            ),
            await client.post(beat, headers=job.worker),
        ]

    statuses = await same_answers(apps, scenario)
    assert statuses == [200, 200, 200, 404, 404, 403, 401, 200, 409]


async def test_finishes_answer_as_their_route(apps: Apps) -> None:
    async def scenario(client: httpx.AsyncClient, apps: Apps) -> list[httpx.Response]:
        job = await running_job(client, apps.database)
        finish = f"{job.url}/finish"
        body = {"status": "failed", "reason": f"broke: {AWKWARD}"}
        return [
            await client.post(finish, json=body, headers=job.other_worker),
            await client.post(finish, json=body, headers=job.admin),
            await client.post(finish, json=body, headers=job.worker),
            await client.post(finish, json={"status": "succeeded"}, headers=job.worker),
        ]

    assert await same_answers(apps, scenario) == [404, 403, 200, 409]


async def test_bodies_past_the_cap_without_a_length_answer_as_their_route(apps: Apps) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b" " * MIB

    async def scenario(client: httpx.AsyncClient, apps: Apps) -> list[httpx.Response]:
        job = await running_job(client, apps.database)
        json_type = {**job.worker, "Content-Type": "application/json"}
        return [
            await client.patch(f"{job.url}/steps/0", content=chunks(), headers=json_type),
            await client.post(f"{job.url}/finish", content=chunks(), headers=json_type),
            await client.post(
                f"{job.url}/steps/0/log?offset=0", content=chunks(), headers=json_type
            ),
        ]

    assert await same_answers(apps, scenario) == [413, 413, 413]


async def test_job_creations_answer_as_their_route(apps: Apps) -> None:
    async def scenario(client: httpx.AsyncClient, apps: Apps) -> list[httpx.Response]:
        tag = uuid.uuid4().hex[:12]
        job = await running_job(client, apps.database)
        pipeline_id = (await client.get(job.url, headers=job.admin)).json()["pipeline_id"]
        create = f"/api/v1/pipelines/{pipeline_id}/jobs"
        _, outsider = await make_user(apps.database, f"outsider-{tag}")
        answers = [
            await client.post(create, headers=job.admin),
            await client.post(f"{create}?ignored=1", content=b"ignored", headers=job.admin),
            await client.post("/api/v1/pipelines/no-such-pipeline/jobs", headers=job.admin),
            await client.post(create, headers=outsider),
            await client.post(create, headers=job.worker),
            await send_without_token(client, "POST", create),
        ]
        # Leave no job pending for the next run's claims.
        for _ in range(2):
            claimed = await client.post("/api/v1/worker/claim", headers=job.other_worker)
            assert claimed.status_code == 200
        return answers

    assert await same_answers(apps, scenario) == [201, 201, 404, 404, 403, 401]


# Declined by the lane: the routes answer, the body the lane read replayed to them


async def test_requests_the_lane_declines_answer_as_their_route(apps: Apps) -> None:
    async def scenario(client: httpx.AsyncClient, apps: Apps) -> list[httpx.Response]:
        job = await running_job(client, apps.database)
        steps = f"{job.url}/steps"
        log = f"{steps}/0/log"
        worker = job.worker
        charset = {**worker, "Content-Type": "application/json; charset=utf-8"}
        text = {**worker, "Content-Type": "text/plain"}
        no_type = {**worker, "Content-Type": ""}
        return [
            # Valid for the route in a form the lane does not parse: answered, not refused.
            await client.patch(f"{steps}/0", content=b'{"status":"running"}', headers=charset),
            await client.post(f"{log}?offset=00", content=b"ab", headers=worker),
            await client.post(f"{log}?offset=2&offset=2", content=b"cd", headers=worker),
            await client.post("/api/v1/worker/claim?wait=00", headers=worker),
            await client.post("/api/v1/worker/claim?wait=0&other=1", headers=worker),
            await client.patch(f"{steps}/01", json={"status": "skipped"}, headers=worker),
            # Invalid: the route's own 422s and 400s.
            await client.patch(f"{steps}/1", content=b'{"status":', headers=worker),
            await client.patch(f"{steps}/1", content=b'{"status":"skipped"}', headers=text),
            await client.patch(f"{steps}/1", content=b'{"status":"skipped"}', headers=no_type),
            await client.patch(f"{steps}/1", content=b"", headers=charset),
            await client.patch(f"{steps}/1", content=b"\xff\xfe{", headers=charset),
            await client.patch(f"{steps}/1", json={"status": "bogus"}, headers=worker),
            await client.patch(
                f"{steps}/1", json={"status": "running", "exit_code": 1}, headers=worker
            ),
            await client.patch(f"{steps}/1", json={"status": "skipped", "x": 1}, headers=worker),
            await client.patch(f"{steps}/-1", json={"status": "skipped"}, headers=worker),
            await client.patch(f"{steps}/{2**31}", json={"status": "skipped"}, headers=worker),
            await client.patch(f"{steps}/one", json={"status": "skipped"}, headers=worker),
            await client.post(log, content=b"x", headers=worker),
            await client.post(f"{log}?offset=-1", content=b"x", headers=worker),
            await client.post(f"{log}?offset={2**53 + 1}", content=b"x", headers=worker),
            await client.post(f"{log}?offset=-1", content=b"x", headers=bearer("nope")),
            await client.post("/api/v1/worker/claim?wait=61", headers=worker),
            await client.post("/api/v1/worker/claim?wait=soon", headers=worker),
            await client.post(f"{job.url}/finish", json={"status": "running"}, headers=worker),
            await client.post(f"{job.url}/finish", content=b"[", headers=bearer("nope")),
            await client.post(f"{job.url}/finish", json=None, headers=worker),
        ]

    statuses = await same_answers(apps, scenario, client="declining")
    assert statuses[:6] == [200, 200, 200, 204, 204, 200]
    assert set(statuses[6:]) <= {400, 401, 422}


async def test_the_lane_keeps_the_request_id_and_the_request_log_line(
    apps: Apps, captured_logs: CapturedLogs
) -> None:
    job = await running_job(apps.lane, apps.database)
    response = await apps.lane.post(
        f"{job.url}/heartbeat", headers={**job.worker, "X-Request-ID": "lane-check-1"}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "lane-check-1"
    [line] = [line for line in captured_logs.requests() if line["request_id"] == "lane-check-1"]
    assert line["path"] == "/api/v1/jobs/{job_id}/heartbeat"
    assert line["method"] == "POST"
    assert line["status"] == 200
    # The token is in neither the answer nor the log.
    token = job.worker["Authorization"].removeprefix("Bearer ")
    assert token not in response.text
    assert token not in captured_logs.text


async def test_a_declined_request_is_logged_once_under_its_route(
    apps: Apps, captured_logs: CapturedLogs
) -> None:
    job = await running_job(apps.declining, apps.database)
    response = await apps.declining.patch(
        f"{job.url}/steps/0",
        json={"status": "bogus"},
        headers={**job.worker, "X-Request-ID": "d-1"},
    )
    assert response.status_code == 422
    [line] = [line for line in captured_logs.requests() if line["request_id"] == "d-1"]
    assert line["path"] == "/api/v1/jobs/{job_id}/steps/{position}"
    assert line["status"] == 422
