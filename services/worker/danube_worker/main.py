"""`danube-worker`: claim jobs from this node's API and run them, one at a time, until
SIGTERM or SIGINT (DESIGN section 12).

Exit codes: 0 after a clean stop (the running job, if any, is cancelled and finished
`cancelled`, reason `worker stopped`); 2 for a bad configuration, a token file that is
missing, unreadable or empty, or a token the API refuses (401, or 403 for a token that is
not a worker's): no restart can fix those; 1 for anything else that fails at run time.

The token is read once, kept in memory, and never printed or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import uvloop

from danube_shared.config import Settings
from danube_shared.errors import DanubeError
from danube_shared.keyd_worker_client import KeydWorkerClient
from danube_shared.logs import get_logger
from danube_shared.program import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    program_parser,
    start_program,
)
from danube_worker.api_client import ApiClient, ApiRefused, ApiUnavailable
from danube_worker.job_runner import JobRunner
from danube_worker.process_tree import ProcessTree, become_child_subreaper

PROG = "danube-worker"
# Back-off between claims while the API cannot be reached (it may be starting).
FIRST_BACKOFF_S: Final = 0.5
MAX_BACKOFF_S: Final = 10.0
ABORT_AGAIN_S: Final = 0.5

log = get_logger("danube_worker")


class TokenRefused(DanubeError):
    """The worker's token is missing, unreadable, empty, or refused by the API."""

    code = "token_refused"


def main(argv: Sequence[str] | None = None) -> int:
    parser = program_parser(PROG, "The Danube worker: claims jobs and runs their steps.")
    args = parser.parse_args(argv)
    settings = start_program(PROG, args.config)
    try:
        token = read_token(settings.worker.token_file)
    except TokenRefused as exc:
        fail(PROG, exc.message, EXIT_USAGE)
    try:
        become_child_subreaper()
    except OSError as exc:
        fail(PROG, f"cannot become a child subreaper (Linux only): {exc.strerror}", EXIT_FAILURE)
    try:
        # uvloop, as the API runs on: every step of a job is a few turns of the loop
        # (the API's answers, keyd's reply, the shell's exit), each cheaper there.
        return uvloop.run(serve(settings, token))
    except TokenRefused as exc:
        fail(PROG, exc.message, EXIT_USAGE)


def read_token(path: Path) -> str:
    """The worker's API token from `path`; `TokenRefused` naming the path (never the
    file's contents) if it cannot be used."""
    fix = "write the worker's token there (`danube up` does), or set worker.token_file"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenRefused(f"worker token file {path} does not exist; {fix}") from None
    except OSError as exc:
        raise TokenRefused(f"worker token file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TokenRefused(f"worker token file {path} is not text; {fix}") from None
    token = text.strip()
    if not token:
        raise TokenRefused(f"worker token file {path} is empty; {fix}")
    if any(character.isspace() for character in token):
        raise TokenRefused(f"worker token file {path} holds more than one token; {fix}")
    return token


async def serve(settings: Settings, token: str) -> int:
    """Claim and run jobs until SIGTERM or SIGINT."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    api = ApiClient(settings.worker_api_url(), token)
    secrets = KeydWorkerClient(settings.keyd)
    tree = ProcessTree()
    runner = JobRunner(
        api=api,
        worker=settings.worker,
        keyd=settings.keyd,
        secrets=secrets,
        tree=tree,
        step_path=os.environ.get("PATH", os.defpath),
    )

    def stop() -> None:
        stopping.set()
        runner.worker_stopping()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    log.info(
        "worker started",
        api_url=settings.worker_api_url(),
        workdir=str(settings.worker.workdir),
        claim_wait_s=settings.worker.claim_wait_s,
    )
    try:
        await claim_loop(api, runner, settings.worker.claim_wait_s, stopping)
    finally:
        api.close()
        await secrets.close()
        await tree.stop_all_descendants(grace_s=settings.worker.kill_grace_s)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("worker stopped")
    return EXIT_OK


async def claim_loop(
    api: ApiClient, runner: JobRunner, wait_s: int, stopping: asyncio.Event
) -> None:
    """Long-poll claims and run each job claimed, until `stopping` is set.

    Raises `TokenRefused` when the API refuses the worker's token."""
    # One waiter for the whole loop, not one made and cancelled with every claim.
    stopped = asyncio.create_task(stopping.wait())
    try:
        await _claim_until_stopped(api, runner, wait_s, stopping, stopped)
    finally:
        stopped.cancel()
        await asyncio.wait({stopped})


async def _claim_until_stopped(
    api: ApiClient,
    runner: JobRunner,
    wait_s: int,
    stopping: asyncio.Event,
    stopped: asyncio.Task[bool],
) -> None:
    backoff = FIRST_BACKOFF_S
    while not stopping.is_set():
        claiming = asyncio.create_task(api.claim(wait_s))
        await asyncio.wait({claiming, stopped}, return_when=asyncio.FIRST_COMPLETED)
        while not claiming.done():
            # A claim the API makes after this point is never seen: its job is failed as
            # `worker lost` after api.worker_timeout_s. Waiting the long poll out instead
            # would hold the stop up for worker.claim_wait_s. Again until it ends: the
            # request may still have been connecting, with no socket to break yet.
            api.abort()
            await asyncio.wait({claiming}, timeout=ABORT_AGAIN_S)
        try:
            claim = await claiming
        except ApiUnavailable as exc:
            if stopping.is_set():
                break
            log.warning("the API is unavailable; claiming again later", error=exc.message)
            await _sleep_unless(stopping, backoff)
            backoff = min(2 * backoff, MAX_BACKOFF_S)
            continue
        except ApiRefused as exc:
            if exc.status in (401, 403):
                raise TokenRefused(
                    f"the API at {api.base_url} refused the worker's token ({exc.status}); "
                    "give the worker a valid worker token in worker.token_file"
                ) from None
            log.error("the API refused the claim", error=exc.message)  # noqa: TRY400 -- an expected refusal whose message says it all
            await _sleep_unless(stopping, backoff)
            backoff = min(2 * backoff, MAX_BACKOFF_S)
            continue
        backoff = FIRST_BACKOFF_S
        if claim is not None:
            await runner.run(claim, stopping)


async def _sleep_unless(stopping: asyncio.Event, delay_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), delay_s)


if __name__ == "__main__":
    raise SystemExit(main())
