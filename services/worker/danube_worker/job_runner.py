"""Running one claimed job to its end (DESIGN section 12): its secrets, its workspace, its
steps in order, their masked logs, the heartbeat that keeps its lease, and its finish.

1. The job's secrets come from keyd's worker socket with the job's token, retried while
   keyd restarts (it comes back without them until the API reloads running jobs) for up
   to `SECRETS_ATTEMPTS` times `keyd.request_timeout_ms`; past that the job finishes
   `failed`, reason `secrets unavailable`. Secrets too short to mask are named in a
   warning (never their values).
2. The workspace `worker.workdir/<job_id>` is made 0700.
3. Each step in order: PATCH `running`, run it (`StepRunner`) with exactly its
   environment (`step_environment`), its output through a `MaskStream` of its own into
   a `LogShipper`, then PATCH its final status and exit code. A failed or timed-out step
   ends the job `failed`; the API marks the steps not run `skipped` when the job finishes.
4. A heartbeat every `worker.heartbeat_s` keeps the job's lease. `cancel_requested`, seen
   on a heartbeat or a log append, or the worker's own stop (SIGTERM), stops the running
   step and ends the job `cancelled`.
5. When the job is over, whatever happened, everything its steps left running is stopped,
   the job is finished with its status and reason, and the workspace is removed.

A request the API cannot serve now (`ApiUnavailable`) is retried; past
`RETRY_WINDOW_S` the worker gives the job up, and the API's lost-worker rule fails it.
A refusal (`ApiRefused`, such as 409 for a job the API has already failed as lost) ends
the job at once. Secrets are held only here, in memory, and in the steps' environments.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from danube_shared.config import KeydSettings, WorkerSettings
from danube_shared.errors import InvalidInput, KeydRejected, KeydUnavailable
from danube_shared.keyd_worker_client import KeydWorkerClient
from danube_shared.logs import get_logger
from danube_worker.api_client import ApiClient, ApiRefused, ApiUnavailable, Claim
from danube_worker.delayed_task import DelayedTask
from danube_worker.log_shipper import RETRY_WINDOW_S, LogRejected, LogShipper
from danube_worker.masking import SecretMasker
from danube_worker.process_tree import ProcessTree
from danube_worker.step_runner import StepEnd, StepResult, StepRunner, step_environment

DEFAULT_STEP_TIMEOUT_S: Final = 3600
SECRETS_ATTEMPTS: Final = 4
"""Secrets are fetched for up to this many times `keyd.request_timeout_ms`."""
SECRETS_UNAVAILABLE: Final = "secrets unavailable"
CANCEL_REQUESTED: Final = "cancel requested"
WORKER_STOPPED: Final = "worker stopped"
# A stopping worker has `worker.kill_grace_s` plus a margin before supervisord kills it;
# its last reports are retried for this long, not for the whole `RETRY_WINDOW_S`.
STOPPING_RETRY_WINDOW_S: Final = 10.0
_SECRETS_PAUSE_S: Final = 0.25
_FIRST_BACKOFF_S: Final = 0.1
_MAX_BACKOFF_S: Final = 2.0
# keyd answers these while it restarts (not_found: its cache is empty until the API
# reloads the running jobs); any other refusal is final.
_PASSING_KEYD_REFUSALS: Final = frozenset({"not_found", "internal"})

log = get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a job ended, as the worker reports it to `finish`."""

    status: str
    reason: str | None = None


class JobStop:
    """Why the running job must stop before its steps are done; the first reason wins.

    `event` is the step runner's cancel signal."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.outcome: JobOutcome | None = None

    def request(self, status: str, reason: str) -> None:
        if self.outcome is None:
            self.outcome = JobOutcome(status, reason)
            log.info("stopping the job", status=status, reason=reason)
        self.event.set()


class JobGivenUp(Exception):
    """The API cannot be reached to report the job; it is left to the lost-worker rule."""


@dataclass(frozen=True, slots=True)
class _Step:
    position: int
    name: str
    command: str
    timeout_s: float

    @classmethod
    def from_job(cls, step: Mapping[str, Any]) -> _Step:
        timeout = step.get("timeout_s")
        return cls(
            position=int(step["position"]),
            name=str(step["name"]),
            command=str(step["command"]),
            timeout_s=float(timeout) if timeout is not None else DEFAULT_STEP_TIMEOUT_S,
        )


@dataclass(frozen=True, slots=True)
class _Running:
    """What the steps of the running job share."""

    claim: Claim
    workspace: Path
    secrets: Mapping[str, bytes]
    masker: SecretMasker
    stop: JobStop


class JobRunner:
    """Runs claimed jobs, one at a time, in this worker's process tree."""

    def __init__(
        self,
        *,
        api: ApiClient,
        worker: WorkerSettings,
        keyd: KeydSettings,
        secrets: KeydWorkerClient,
        tree: ProcessTree,
        step_path: str,
    ) -> None:
        self._api = api
        self._worker = worker
        self._keyd = keyd
        self._secrets = secrets
        self._tree = tree
        self._steps = StepRunner(tree=tree, kill_grace_s=worker.kill_grace_s)
        self._step_path = step_path
        self._running: JobStop | None = None

    def worker_stopping(self) -> None:
        """The worker was told to stop (its SIGTERM handler calls this): the running job,
        if any, stops and ends `cancelled`, reason `worker stopped`. A callback, not a
        task per job waiting for the worker's stop."""
        if self._running is not None:
            self._running.request("cancelled", WORKER_STOPPED)

    async def run(self, claim: Claim, stopping: asyncio.Event) -> JobOutcome | None:
        """Run the job to its end and finish it; None if it had to be given up unfinished.

        `stopping` is the worker's own stop: set before the job starts, the job ends
        `cancelled`, reason `worker stopped`, as it does when `worker_stopping` is called
        while it runs; once set, the finish is retried for `STOPPING_RETRY_WINDOW_S`.
        """
        job_id = claim.job_id
        workspace = self._worker.workdir / job_id
        stop = JobStop()
        if stopping.is_set():  # claimed just as the worker was told to stop
            stop.request("cancelled", WORKER_STOPPED)
        self._running = stop
        with structlog.contextvars.bound_contextvars(job_id=job_id):
            log.info("job claimed", number=claim.job.get("number"))
            heartbeat = DelayedTask(self._worker.heartbeat_s, lambda: self._heartbeat(job_id, stop))
            outcome: JobOutcome | None = None
            stopped_all = False
            try:
                try:
                    outcome = await self._run_job(claim, workspace, stop)
                except ApiRefused as exc:
                    log.error("the API refused a report of the job", error=exc.message)  # noqa: TRY400 -- an expected refusal whose message says it all; no traceback
                    outcome = JobOutcome("failed", "the API refused the worker's report")
                except JobGivenUp:
                    log.error("the API cannot be reached; the job is given up")  # noqa: TRY400 -- an expected refusal whose message says it all; no traceback
                except Exception:
                    # A defect of the worker: the job still ends, and the worker goes on.
                    log.exception("the job failed inside the worker")
                    outcome = JobOutcome("failed", "worker error")
                await self._tree.stop_all_descendants(grace_s=self._worker.kill_grace_s)
                stopped_all = True
                if outcome is not None:
                    await self._finish_and_drop(job_id, outcome, stopping, workspace)
            finally:
                self._running = None
                heartbeat.cancel()
                await heartbeat.wait()
                if not stopped_all:
                    # After an unexpected error too: nothing of the job may outlive it.
                    await asyncio.shield(
                        self._tree.stop_all_descendants(grace_s=self._worker.kill_grace_s)
                    )
                remove_workspace(workspace)  # if it is still there
        return outcome

    async def _run_job(self, claim: Claim, workspace: Path, stop: JobStop) -> JobOutcome:
        # The workspace is made while keyd answers, off the job's critical path; a job
        # whose secrets do not come has it removed with the rest (`run`).
        secrets = await _meanwhile(self._fetch_secrets(claim, stop), make_workspace, workspace)
        if stop.outcome is not None:
            return stop.outcome
        if secrets is None:
            return JobOutcome("failed", SECRETS_UNAVAILABLE)
        masker = SecretMasker(secrets)
        if masker.short_secrets:
            log.warning(
                "secrets too short to mask: their values are not masked in the log",
                secret_names=list(masker.short_secrets),
            )
        steps = sorted(
            (_Step.from_job(step) for step in claim.job.get("steps", [])),
            key=lambda step: step.position,
        )
        for step in steps:
            if stop.outcome is not None:
                return stop.outcome
            ended = await self._run_step(_Running(claim, workspace, secrets, masker, stop), step)
            if ended is not None:
                return ended
        # Every step succeeded: a stop that came after the last one changes nothing.
        return JobOutcome("succeeded")

    async def _run_step(self, job: _Running, step: _Step) -> JobOutcome | None:
        """Run one step and report it; the job's outcome if the job ends here."""
        claim, workspace, stop = job.claim, job.workspace, job.stop
        job_id = claim.job_id
        try:
            environment = step_environment(
                path=self._step_path,
                workspace=workspace,
                job_id=job_id,
                job_number=int(claim.job["number"]),
                pipeline_id=str(claim.job["pipeline_id"]),
                step_name=step.name,
                secrets=job.secrets,
            )
        except InvalidInput as exc:
            await self._reliably(self._api.update_step, job_id, step.position, "running")
            await self._reliably(self._api.update_step, job_id, step.position, "failed")
            return JobOutcome("failed", exc.message)
        # The step is marked running while its shell starts, not before: a round trip to
        # the API off every step's path. Its end is reported only once `running` is
        # recorded (one connection, in order), and a refusal stops the step.
        marking = asyncio.create_task(
            self._reliably(self._api.update_step, job_id, step.position, "running")
        )
        marking.add_done_callback(lambda done: _stop_if_failed(done, stop))
        # One turn of the loop, so the mark is on its way before the fork and exec, which
        # hold the loop for a millisecond or two.
        await asyncio.sleep(0)
        log.info("step started", position=step.position, step=step.name)
        refused = f"the log of step {step.name} was refused by the API"
        try:
            try:
                async with LogShipper(
                    self._api,
                    job_id=job_id,
                    position=step.position,
                    stream=job.masker.stream(),
                    on_cancel_requested=lambda: stop.request("cancelled", CANCEL_REQUESTED),
                    on_failure=lambda: stop.request("failed", refused),
                ) as shipper:
                    result = await self._steps.run(
                        step.command,
                        workspace=workspace,
                        environment=environment,
                        timeout_s=step.timeout_s,
                        cancel=stop.event,
                        on_output=shipper.feed,
                    )
            except LogRejected:
                await marking
                await self._reliably(self._api.update_step, job_id, step.position, "failed")
                return JobOutcome("failed", refused)
            except ApiUnavailable:
                raise JobGivenUp from None
            # `ApiRefused` or `JobGivenUp` of the mark: the job ends as it did before.
            await marking
        finally:
            if not marking.done():
                marking.cancel()
                await asyncio.wait({marking})
        return await self._report_step(job_id, step, result, stop)

    async def _report_step(
        self, job_id: str, step: _Step, result: StepResult, stop: JobStop
    ) -> JobOutcome | None:
        status = result.status
        if result.end is StepEnd.CANCELLED and stop.outcome is not None:
            status = stop.outcome.status
        await self._reliably(self._api.update_step, job_id, step.position, status, result.exit_code)
        log.info(
            "step ended",
            position=step.position,
            step=step.name,
            status=status,
            exit_code=result.exit_code,
        )
        if result.end is StepEnd.SUCCEEDED:
            return None
        if result.end is StepEnd.TIMED_OUT:
            return JobOutcome(
                "failed", f"step {step.name} timed out after {_seconds(step.timeout_s)} s"
            )
        if result.end is StepEnd.CANCELLED:
            return stop.outcome or JobOutcome("cancelled", CANCEL_REQUESTED)
        return JobOutcome("failed", f"step {step.name} failed with exit code {result.exit_code}")

    async def _fetch_secrets(self, claim: Claim, stop: JobStop) -> dict[str, bytes] | None:
        """The job's secrets from keyd, or None if keyd cannot give them in time (or the
        job is stopped meanwhile)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SECRETS_ATTEMPTS * self._keyd.request_timeout_ms / 1000
        attempt = 0
        while True:
            attempt += 1
            try:
                secrets = await self._secrets.job_secrets(claim.job_id, claim.token)
            except KeydRejected as exc:
                if exc.reason not in _PASSING_KEYD_REFUSALS:
                    log.error("keyd refused the job's secrets", reason=exc.reason)  # noqa: TRY400 -- an expected refusal whose message says it all; no traceback
                    return None
                problem: str = exc.message
            except KeydUnavailable as exc:
                problem = exc.message
            else:
                log.info("secrets fetched", secret_names=sorted(secrets))
                return secrets
            if stop.event.is_set():
                return None
            if loop.time() >= deadline:
                log.error("the job's secrets are unavailable", attempts=attempt, error=problem)
                return None
            log.warning("keyd did not give the job's secrets; trying again", error=problem)
            await asyncio.sleep(min(_SECRETS_PAUSE_S, max(0.0, deadline - loop.time())))

    async def _heartbeat(self, job_id: str, stop: JobStop) -> None:
        """Beat now (`worker.heartbeat_s` into the job) and every `heartbeat_s` after."""
        while True:
            try:
                if await self._api.heartbeat(job_id):
                    stop.request("cancelled", CANCEL_REQUESTED)
            except ApiUnavailable as exc:
                log.warning("heartbeat failed", error=exc.message)
            except ApiRefused as exc:
                # The job is no longer this worker's (failed as lost, or revoked).
                log.error("the API refused the job's heartbeat", error=exc.message)  # noqa: TRY400 -- an expected refusal whose message says it all; no traceback
                stop.request("failed", "the API refused the worker's heartbeat")
                return
            await asyncio.sleep(self._worker.heartbeat_s)

    async def _finish_and_drop(
        self, job_id: str, outcome: JobOutcome, stopping: asyncio.Event, workspace: Path
    ) -> None:
        """Finish the job and drop its workspace (DESIGN 12.6), the removal done while
        the API records the finish: its `rmdir` (up to a millisecond or two on a busy
        disk) is then off the path to the next claim."""
        await _meanwhile(self._finish(job_id, outcome, stopping), remove_workspace, workspace)

    async def _finish(self, job_id: str, outcome: JobOutcome, stopping: asyncio.Event) -> None:
        window = STOPPING_RETRY_WINDOW_S if stopping.is_set() else RETRY_WINDOW_S
        try:
            await self._reliably(
                self._api.finish, job_id, outcome.status, outcome.reason, window_s=window
            )
        except ApiRefused as exc:
            log.error("the API refused to finish the job", error=exc.message)  # noqa: TRY400 -- an expected refusal whose message says it all; no traceback
        except JobGivenUp:
            log.error("the API cannot be reached; the job is left unfinished")  # noqa: TRY400 -- an expected refusal whose message says it all; no traceback
        else:
            log.info("job finished", status=outcome.status, reason=outcome.reason)

    async def _reliably(
        self,
        call: Callable[..., Awaitable[T]],
        *args: Any,
        window_s: float = RETRY_WINDOW_S,
    ) -> T:
        """`call(*args)`, retried while the API is unavailable; `JobGivenUp` past the window."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window_s
        backoff = _FIRST_BACKOFF_S
        while True:
            try:
                return await call(*args)
            except ApiUnavailable as exc:
                if loop.time() >= deadline:
                    raise JobGivenUp from None
                log.warning("the API is unavailable; trying again", error=exc.message)
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, _MAX_BACKOFF_S)


def _stop_if_failed(marking: asyncio.Task[None], stop: JobStop) -> None:
    """A step whose `running` the API refused (or that could not be reported) is stopped
    at once; the runner then raises the mark's error, as if it had come first."""
    if not marking.cancelled() and marking.exception() is not None:
        stop.request("failed", "the API refused the worker's report")


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


async def _meanwhile(
    request: Coroutine[Any, Any, T], work: Callable[[Path], object], path: Path
) -> T:
    """`request`'s outcome, with `work(path)` done while it is on its way: the request
    starts first (one turn of the loop to send it), and `work` failing cancels it."""
    pending = asyncio.create_task(request)
    try:
        await asyncio.sleep(0)
        work(path)
    except BaseException:
        pending.cancel()
        await asyncio.wait({pending})
        raise
    return await pending


def make_workspace(workspace: Path) -> None:
    """The job's workspace, mode 0700 whatever the umask, in a workdir made 0700 too.

    One `mkdir` on every job's path; the workdir is made, and a workspace left by a
    worker killed outright removed, only when that `mkdir` says so."""
    try:
        workspace.mkdir(mode=0o700)
    except FileNotFoundError:
        workspace.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        workspace.mkdir(mode=0o700)
    except FileExistsError:
        remove_workspace(workspace)
        workspace.mkdir(mode=0o700)
    workspace.chmod(0o700)


def remove_workspace(workspace: Path) -> None:
    """Remove the workspace, even the directories a step made unwritable."""
    try:
        # Most jobs leave it empty: one rmdir, not a walk and a tree removal (0.6 to 1.3
        # ms on every job's path).
        workspace.rmdir()
    except FileNotFoundError:
        return
    except OSError:
        pass  # not empty, or not ours to remove as it stands: the whole walk below
    else:
        return
    with contextlib.suppress(OSError):
        workspace.chmod(stat.S_IRWXU)
    for root, directories, _ in os.walk(workspace):
        for name in directories:
            path = Path(root) / name
            with contextlib.suppress(OSError):
                if not path.is_symlink():
                    path.chmod(stat.S_IRWXU)
    try:
        shutil.rmtree(workspace)
    except OSError as exc:
        log.error("workspace not removed", path=str(workspace), error=exc.strerror)  # noqa: TRY400 -- an expected refusal whose message says it all; no traceback
