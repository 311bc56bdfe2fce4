"""The web page in a real browser against a real stack: Playwright driving headless
Debian chromium, `danube up` in a temporary home with its worker, signed in with the
admin token `danube up` wrote.

A job's step prints a line, then waits (a sleep loop) until the test has seen that line
on the page while the job still runs, then prints another: so the page must follow the
log live, not show it at the end. The step also prints the team secret, which the page
shows as `***`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from sqlalchemy.orm import Session

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.repositories import TokenRepository
from danube_shared.tokens import TokenKind, new_token, token_sha256
from tests.support.stack import Stack, Stacks, stacks, wait_for, write_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SECRET_VALUE = "s3cret-shown-as-stars"  # noqa: S105 -- the value the page must never show
# Generous hang guards, not timing asserts: the machine is shared and slow.
UI_TIMEOUT_MS = 90_000
# The picture of a job's page in the README and docs/ui.md, taken by the test that
# follows a job: written there only when asked (`REFRESH_UI_SCREENSHOT=1 uv run pytest
# tests/web/test_browser.py`), so that a test run leaves the checkout as it was.
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ui-job.png"
REFRESH_SCREENSHOT = os.environ.get("REFRESH_UI_SCREENSHOT") == "1"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (/usr/bin/chromium); .ci/run installs it",
    ),
]


@dataclass
class Site:
    stack: Stack
    admin_token: str
    outsider_token: str
    team_id: str
    pipeline_id: str
    long_pipeline_id: str
    gate: Path  # the step waits for this file before its last line


def _api(stack: Stack, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.url, timeout=15.0, headers={"Authorization": f"Bearer {token}"}
    )


def _created(response: httpx.Response) -> dict[str, str]:
    assert response.status_code in (200, 201), response.text
    body: dict[str, str] = response.json()
    return body


def _token_for(session: Session, user_id: str, token: str) -> None:
    TokenRepository(session).create_for_user(
        user_id, name="browser-test", token_sha256=token_sha256(token)
    )


async def _give_token(database_path: Path, user_id: str, token: str) -> None:
    # DESIGN's API makes a token only for its caller; the test makes one for a user it
    # created, in the stack's own database (WAL: the running API is not disturbed).
    database = Database.open(DatabaseSettings(path=database_path))
    try:
        await database.write(_token_for, user_id, token)
    finally:
        await database.dispose()


def _wait_for_file(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"danube up never wrote {path}"
        time.sleep(0.1)
    return path.read_text(encoding="utf-8").strip()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with stacks() as started:
        yield _build_site(started)
    assert started.stray == [], f"processes outlived their stack: {started.stray}"


def _build_site(started: Stacks) -> Site:
    home, port = started.home()
    write_config(home, port)
    stack, up = started.start(home, port)
    # `danube up` names the page's address, beside the API's.
    wait_for(
        lambda: f"The web page is at {stack.url}/ (sign in with an API token)" in up.stdout.lines,
        10,
        "danube up to print the web page's URL",
    )
    admin_token = _wait_for_file(home / "admin.token", 30)
    gate = home / "gate"
    with _api(stack, admin_token) as api:
        team = _created(api.post("/api/v1/teams", json={"name": "web"}))
        pipeline = _created(
            api.post(
                f"/api/v1/teams/{team['id']}/pipelines",
                json={
                    "name": "greet",
                    "steps": [
                        {
                            "name": "hello",
                            # The loop is the step's sleep: it ends when the test has seen
                            # the first lines on the page (or after 120 s, a hang guard).
                            # The worker holds back the tail of the output that could
                            # still begin a secret's match; the line of dots after the
                            # secret pushes what comes before it out to the page.
                            "command": (
                                'echo "before the sleep"; echo "secret is $DEPLOY_KEY"; '
                                "printf '%0512d\\n' 0 | tr 0 .; "
                                f"i=0; while [ ! -e {gate} ] && [ $i -lt 600 ]; do "
                                "sleep 0.2; i=$((i+1)); done; echo after-the-sleep"
                            ),
                        },
                        {"name": "bye", "command": "echo goodbye"},
                    ],
                },
            )
        )
        long_pipeline = _created(
            api.post(
                f"/api/v1/teams/{team['id']}/pipelines",
                json={"name": "long", "steps": [{"name": "wait", "command": "sleep 600"}]},
            )
        )
        put = api.put(
            f"/api/v1/teams/{team['id']}/secrets/DEPLOY_KEY", json={"value": SECRET_VALUE}
        )
        assert put.status_code in (200, 201, 204), put.text
        outsider = _created(api.post("/api/v1/users", json={"username": "eve"}))
        other_team = _created(api.post("/api/v1/teams", json={"name": "elsewhere"}))
        member = api.put(
            f"/api/v1/teams/{other_team['id']}/members/{outsider['id']}", json={"role": "owner"}
        )
        assert member.status_code in (200, 201), member.text
    outsider_token = new_token(TokenKind.USER)
    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    with ThreadPoolExecutor(1) as executor:
        executor.submit(
            asyncio.run, _give_token(stack.database, outsider["id"], outsider_token)
        ).result()
    return Site(
        stack=stack,
        admin_token=admin_token,
        outsider_token=outsider_token,
        team_id=team["id"],
        pipeline_id=pipeline["id"],
        long_pipeline_id=long_pipeline["id"],
        gate=gate,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # `expect` waits 5 s by default: too short a hang guard on a shared, slow machine.
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    created = browser.new_context(viewport={"width": 1100, "height": 900})
    created.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield created
    finally:
        created.close()


def _sign_in(context: BrowserContext, site: Site, token: str) -> Page:
    page = context.new_page()
    page.goto(site.stack.url + "/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Teams")).to_be_visible()
    return page


def test_run_follows_the_log_live_masks_the_secret_and_succeeds(
    context: BrowserContext, site: Site
) -> None:
    page = _sign_in(context, site, site.admin_token)
    page.get_by_role("link", name="web", exact=True).click()
    expect(page.get_by_role("code").filter(has_text="DEPLOY_KEY")).to_be_visible()
    page.get_by_role("link", name="greet").click()
    page.get_by_role("button", name="Run").click()
    page.wait_for_url("**/jobs/*")

    log = page.get_by_role("log", name="Log of hello")
    expect(log).to_contain_text("before the sleep")
    # Seen while the step is still in its sleep: the page follows the running job.
    expect(page.locator("#job-status")).to_have_text("running")
    assert "after-the-sleep" not in log.inner_text()
    expect(log).to_contain_text("secret is ***")
    site.gate.touch()

    expect(log).to_contain_text("after-the-sleep")
    expect(page.get_by_role("log", name="Log of bye")).to_contain_text("goodbye")
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#step-0 .step-exit")).to_have_text("0")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    # Each line once: the page appended only what was new.
    assert log.inner_text().count("before the sleep") == 1
    assert SECRET_VALUE not in page.content()
    assert site.admin_token not in page.content()
    picture = page.screenshot(full_page=True)
    assert picture.startswith(b"\x89PNG")
    if REFRESH_SCREENSHOT:
        SCREENSHOT.write_bytes(picture)


def test_cancel_stops_a_long_job(context: BrowserContext, site: Site) -> None:
    page = _sign_in(context, site, site.admin_token)
    page.goto(f"{site.stack.url}/pipelines/{site.long_pipeline_id}")
    page.get_by_role("button", name="Run").click()
    page.wait_for_url("**/jobs/*")
    expect(page.locator("#job-status")).to_have_text("running")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("cancelled")
    expect(page.locator("#step-0 .step-status")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)


def test_a_member_of_another_team_gets_404_pages(context: BrowserContext, site: Site) -> None:
    admin = _sign_in(context, site, site.admin_token)
    admin.goto(f"{site.stack.url}/pipelines/{site.pipeline_id}")
    job_href = admin.get_by_role("link", name="#1").get_attribute("href")
    assert job_href is not None
    admin.context.clear_cookies()

    page = _sign_in(context, site, site.outsider_token)
    expect(page.get_by_role("link", name="elsewhere")).to_be_visible()
    expect(page.get_by_role("link", name="web", exact=True)).to_have_count(0)
    for path in (f"/teams/{site.team_id}", f"/pipelines/{site.pipeline_id}", job_href):
        response = page.goto(site.stack.url + path)
        assert response is not None
        assert response.status == 404, path
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()


def test_a_post_without_the_csrf_token_is_refused(context: BrowserContext, site: Site) -> None:
    page = _sign_in(context, site, site.admin_token)
    # The browser's own session cookie, but no CSRF token in the form.
    response = page.request.post(
        f"{site.stack.url}/pipelines/{site.pipeline_id}/run", form={"x": "1"}
    )
    assert response.status == 403
    assert "CSRF" in response.text()


def test_the_job_page_works_on_a_narrow_screen(browser: Browser, site: Site) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740})
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        page = _sign_in(context, site, site.admin_token)
        page.goto(f"{site.stack.url}/pipelines/{site.pipeline_id}")
        page.get_by_role("link", name="#1").click()
        expect(page.get_by_role("log", name="Log of hello")).to_contain_text("after-the-sleep")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"the page scrolls sideways: {width} px wide"
    finally:
        context.close()


def test_the_forms_work_with_the_keyboard(context: BrowserContext, site: Site) -> None:
    page = context.new_page()
    page.goto(site.stack.url + "/")
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")  # the brand link
    page.keyboard.press("Tab")
    expect(page.get_by_label("API token")).to_be_focused()
    page.keyboard.type(site.admin_token)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Teams")).to_be_visible()
