"""Every endpoint that takes a body, fed every field at every edge value and then whatever
Hypothesis makes of bodies, ids and names: the API answers each with a success or a 4xx
problem, never a 5xx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from danube_api.app import create_app
from danube_api.schemas import NAME_PATTERN
from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from tests.api.callers import Headers, claim, make_admin, make_worker
from tests.api.conftest import PROBLEM, api_settings, make_world, serve_as_admin
from tests.api.fake_keyd import FakeKeyd
from tests.api.served_app import state_of

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
# Values made to break things: edges of integer widths, sizes, odd characters.
EDGE_INTEGERS = st.sampled_from([2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 2**64, -1, 0])
EDGE_TEXTS = st.sampled_from(["", "\ud800", "\x00", "ünï", "a" * 300, "x" * 70_000])
JUNK = st.one_of(EDGE_INTEGERS, EDGE_INTEGERS, EDGE_TEXTS, EDGE_TEXTS, JSON)
NAME = st.from_regex(NAME_PATTERN, fullmatch=True)
SOME_TEXT = st.text(min_size=1, max_size=100)
STATUS = st.sampled_from(["pending", "running", "succeeded", "failed", "cancelled"])


def body(**valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A valid body, one with a field replaced by junk, one with fields missing, or any JSON."""
    complete = st.fixed_dictionaries(valid)
    one_wrong = st.sampled_from(sorted(valid)).flatmap(
        lambda wrong: st.fixed_dictionaries({**valid, wrong: JUNK})
    )
    partial = st.fixed_dictionaries({}, optional=valid)
    return st.one_of(complete, one_wrong, one_wrong, one_wrong, partial, JSON)


STEP = st.fixed_dictionaries({"name": SOME_TEXT, "command": st.text(min_size=1, max_size=300)})
BODIES: dict[str, st.SearchStrategy[Any]] = {
    "team": body(name=NAME),
    "user": body(username=NAME, display_name=st.text(min_size=1, max_size=200)),
    "member": body(role=st.sampled_from(["owner", "maintainer", "member"])),
    "pipeline": body(name=NAME, steps=st.lists(STEP, min_size=1, max_size=5)),
    "secret": body(value=SOME_TEXT),
    "pipeline secret": body(value=SOME_TEXT),
    "finish": body(status=STATUS),
    "step": body(status=STATUS, exit_code=st.none() | st.integers(-(2**31), 2**31 - 1)),
    "artifact": body(
        name=st.text(min_size=1, max_size=255),
        size_bytes=st.integers(0, 2**63 - 1),
        sha256=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
        uri=SOME_TEXT,
    ),
}
SEGMENT = st.text(max_size=20).map(lambda text: quote(text, safe=""))


Url = Callable[[str, str], Coroutine[Any, Any, str]]


# The routes of a job's worker: sent with the worker's token, the others with the client's.
WORKER_KINDS = frozenset({"finish", "step", "artifact"})


async def fuzz_targets(client: httpx.AsyncClient) -> tuple[dict[str, Url], Headers]:
    """URL builders for each body kind, from an id slot and a name slot: an empty slot
    means a real object (for jobs, a fresh one claimed by the returned worker, so that
    each example can change it), anything else is used as given."""
    world = await make_world(client)
    user = (await client.post("/api/v1/users", json={"username": "someone"})).json()
    database = state_of(client)["database"]
    admin = await make_admin(database, "fuzz-admin")
    worker = await make_worker(database, "fuzz-worker")

    async def running_job(given: str) -> str:
        if given:
            return given
        created = await client.post(f"/api/v1/pipelines/{world.pipeline_id}/jobs", headers=admin)
        assert created.status_code == 201, created.text
        return (await claim(client, worker)).id

    def real(default: str, given: str) -> str:
        return given or default

    async def team(_i: str, _n: str) -> str:
        return "/api/v1/teams"

    async def user_url(_i: str, _n: str) -> str:
        return "/api/v1/users"

    async def member(i: str, n: str) -> str:
        return f"/api/v1/teams/{real(world.team_id, i)}/members/{real(user['id'], n)}"

    async def pipeline(i: str, _n: str) -> str:
        return f"/api/v1/teams/{real(world.team_id, i)}/pipelines"

    async def team_secret(i: str, n: str) -> str:
        return f"/api/v1/teams/{real(world.team_id, i)}/secrets/{n or 'NAME'}"

    async def pipeline_secret(i: str, n: str) -> str:
        return f"/api/v1/pipelines/{real(world.pipeline_id, i)}/secrets/{n or 'NAME'}"

    async def finish(i: str, _n: str) -> str:
        return f"/api/v1/jobs/{await running_job(i)}/finish"

    async def step(i: str, n: str) -> str:
        return f"/api/v1/jobs/{await running_job(i)}/steps/{n or '0'}"

    async def artifact(i: str, _n: str) -> str:
        return f"/api/v1/jobs/{await running_job(i)}/artifacts"

    return {
        "team": team,
        "user": user_url,
        "member": member,
        "pipeline": pipeline,
        "secret": team_secret,
        "pipeline secret": pipeline_secret,
        "finish": finish,
        "step": step,
        "artifact": artifact,
    }, worker.headers


METHODS = {"member": "PUT", "secret": "PUT", "pipeline secret": "PUT", "step": "PATCH"}
# One valid body per kind: the edge test replaces one field at a time.
VALID: dict[str, dict[str, Any]] = {
    "team": {"name": "team-b"},
    "user": {"username": "user-b", "display_name": "User B"},
    "member": {"role": "maintainer"},
    "pipeline": {"name": "pipe-b", "steps": [{"name": "s", "command": "c"}]},
    "secret": {"value": "v"},
    "pipeline secret": {"value": "v"},
    "finish": {"status": "failed"},
    "step": {"status": "failed", "exit_code": 1},
    "artifact": {"name": "a", "size_bytes": 1, "sha256": "ab" * 32, "uri": "file:///a"},
}
EDGES: list[Any] = [
    *[2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, -1, 0, 1.5, 1e308],
    *["", "\ud800", "\x00", "ünï", "a" * 300, "x" * 70_000, " "],
    *[None, True, [], {}, ["x"], {"x": 1}],
]
EXAMPLES_PER_ENDPOINT = 100


class FuzzClient:
    """The app on a fresh database with a fake keyd, driven from synchronous code (as
    Hypothesis drives a test), answering each request with an assertion that it got a
    success or a 4xx problem."""

    def __init__(self, runner: asyncio.Runner, database_path: Path) -> None:
        self.runner = runner
        app_settings = api_settings(DatabaseSettings(path=database_path))
        self.database = Database.open(app_settings.database)
        app = create_app(
            app_settings, keyd=FakeKeyd(), database=self.database, keyd_watch_interval_s=None
        )
        self._served = serve_as_admin(app, self.database)
        self.client = runner.run(self._served.__aenter__())
        self.targets, self.worker_headers = runner.run(fuzz_targets(self.client))
        self.answered: list[int] = []

    def close(self) -> None:
        self.runner.run(self._served.__aexit__(None, None, None))
        self.runner.run(self.database.dispose())

    def send(self, kind: str, content: bytes, id_slot: str = "", name_slot: str = "") -> None:
        url = self.runner.run(self.targets[kind](id_slot, name_slot))
        response = self.runner.run(
            self.client.request(
                METHODS.get(kind, "POST"),
                url,
                content=content,
                headers={
                    **(self.worker_headers if kind in WORKER_KINDS else {}),
                    "content-type": "application/json",
                },
            )
        )
        self.answered.append(response.status_code)
        assert response.status_code < 500, (url, content[:200], response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"] == PROBLEM
            problem = response.json()
            assert problem["status"] == response.status_code
            assert problem["detail"]


@pytest.fixture
def fuzz(migrated_db_path: Path) -> Iterator[FuzzClient]:
    with asyncio.Runner() as runner:
        client = FuzzClient(runner, migrated_db_path)
        try:
            yield client
        finally:
            client.close()


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_field_at_every_edge_value_answers_below_500(fuzz: FuzzClient, kind: str):
    fuzz.send(kind, json.dumps(VALID[kind]).encode())
    assert fuzz.answered[-1] < 300
    for field in VALID[kind]:
        without = {name: value for name, value in VALID[kind].items() if name != field}
        fuzz.send(kind, json.dumps(without).encode())
        for edge in EDGES:
            fuzz.send(kind, json.dumps({**VALID[kind], field: edge}).encode())


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_no_random_body_id_or_name_makes_the_endpoint_answer_5xx(fuzz: FuzzClient, kind: str):
    @settings(
        max_examples=EXAMPLES_PER_ENDPOINT,
        deadline=None,
        # The same examples on every run: the suite must not flake.
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        data=st.data(),
        id_slot=st.one_of(st.just(""), st.just(""), SEGMENT),
        name_slot=st.one_of(st.just(""), st.just(""), SEGMENT),
        raw=st.integers(0, 9).map(lambda n: n == 0),
    )
    def check(data: st.DataObject, id_slot: str, name_slot: str, raw: bool) -> None:
        if raw:
            content = data.draw(st.binary(max_size=64), label="raw body")
        else:
            content = json.dumps(data.draw(BODIES[kind], label="body")).encode()
        fuzz.send(kind, content, id_slot, name_slot)

    check()
    assert len(fuzz.answered) >= EXAMPLES_PER_ENDPOINT
    assert [status for status in fuzz.answered if status < 300], "no example was ever valid"
