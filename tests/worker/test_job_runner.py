"""A real `danube-worker` running jobs it claims from the fake API, with their secrets
from a real keyd: statuses, exit codes, logs, cancel, timeouts, masking, the step's
environment, log retries, and the worker's own stop (DESIGN sections 12 and 13)."""

from __future__ import annotations

import hashlib
import secrets
import signal

from danube_worker.masking import secret_patterns
from tests.support.stack import processes_of
from tests.worker.worker_stack import EXIT_TIMEOUT_S, WorkerStack, wait_for

RESERVED = {
    "PATH",
    "HOME",
    "LANG",
    "CI",
    "DANUBE_JOB_ID",
    "DANUBE_JOB_NUMBER",
    "DANUBE_PIPELINE_ID",
    "DANUBE_STEP_NAME",
}
# What /bin/sh adds by itself to the environment of the commands it runs.
SHELL_ADDS = {"PWD", "OLDPWD", "SHLVL", "_"}


def test_a_three_step_job_succeeds_and_its_logs_hold_what_the_steps_printed(stack: WorkerStack):
    job = stack.api.queue_job(
        [
            {"name": "one", "command": "echo first; echo second >&2"},
            {"name": "two", "command": "printf 'no newline'"},
            {"name": "three", "command": "head -c 300000 /dev/zero | tr '\\0' a; echo"},
        ]
    )
    stack.load_secrets(job, {})
    stack.start_worker()
    stack.wait_finished(job)
    assert (job.status, job.reason) == ("succeeded", None)
    assert [(s.status, s.exit_code) for s in job.steps] == [("succeeded", 0)] * 3
    assert job.log_of(0) == b"first\nsecond\n"
    assert job.log_of(1) == b"no newline"
    assert job.log_of(2) == b"a" * 300000 + b"\n"
    assert [update["status"] for update in job.steps[0].updates] == ["running", "succeeded"]


def test_a_step_that_prints_nothing_sends_no_log_append(stack: WorkerStack):
    """Nothing to ship, nothing sent: a one-step job is its claim, two step updates and
    its finish (with no heartbeat due: heartbeat_s is longer than the job)."""
    stack.write_config(heartbeat_s=30)
    job = stack.api.queue_job([{"name": "quiet", "command": "true"}])
    stack.load_secrets(job, {})
    stack.start_worker()
    stack.wait_finished(job)
    assert job.status == "succeeded"
    of_the_job = [r for r in stack.api.received if job.id in r.path]
    assert [(r.method, r.path.split("?")[0]) for r in of_the_job] == [
        ("PATCH", f"/api/v1/jobs/{job.id}/steps/0"),
        ("PATCH", f"/api/v1/jobs/{job.id}/steps/0"),
        ("POST", f"/api/v1/jobs/{job.id}/finish"),
    ]
    assert job.log_of(0) == b""


def test_a_failing_step_fails_the_job_and_the_steps_after_it_never_run(stack: WorkerStack):
    job = stack.api.queue_job(
        [
            {"name": "build", "command": "echo building; exit 3"},
            {"name": "deploy", "command": "echo deploying"},
        ]
    )
    stack.load_secrets(job, {})
    stack.start_worker()
    stack.wait_finished(job)
    assert (job.status, job.reason) == ("failed", "step build failed with exit code 3")
    assert (job.steps[0].status, job.steps[0].exit_code) == ("failed", 3)
    assert job.log_of(0) == b"building\n"
    assert job.steps[1].updates == []  # never started: `finish` marked it skipped
    assert job.steps[1].status == "skipped"


def test_a_step_killed_by_a_signal_exits_128_plus_the_signal(stack: WorkerStack):
    job = stack.api.queue_job([{"name": "doomed", "command": "kill -KILL $$"}])
    stack.load_secrets(job, {})
    stack.start_worker()
    stack.wait_finished(job)
    assert (job.steps[0].status, job.steps[0].exit_code) == ("failed", 128 + signal.SIGKILL)
    assert job.status == "failed"


def test_a_step_past_its_timeout_fails_with_no_exit_code_and_the_reason_names_it(
    stack: WorkerStack,
):
    job = stack.api.queue_job(
        [
            {"name": "slow", "command": "echo waiting; sleep 60", "timeout_s": 1},
            {"name": "after", "command": "echo never"},
        ]
    )
    stack.load_secrets(job, {})
    stack.start_worker()
    stack.wait_finished(job)
    assert (job.status, job.reason) == ("failed", "step slow timed out after 1 s")
    assert (job.steps[0].status, job.steps[0].exit_code) == ("failed", None)
    # The shell may report its child's SIGTERM ("Terminated") before it gets its own.
    assert job.log_of(0).startswith(b"waiting\n")
    assert job.steps[1].status == "skipped"


def test_a_step_whose_running_mark_is_refused_is_stopped_and_the_job_fails(
    stack: WorkerStack,
):
    """The mark is sent while the shell starts; its refusal stops the step at once."""
    stack.api.refuse_step_updates(1)
    job = stack.api.queue_job(
        [
            {"name": "long", "command": "sleep 600 & echo $! > pid; wait"},
            {"name": "after", "command": "echo never"},
        ]
    )
    stack.load_secrets(job, {})
    stack.start_worker()
    stack.wait_finished(job)
    assert (job.status, job.reason) == ("failed", "the API refused the worker's report")
    assert job.steps[0].updates == []  # no end is reported for a step never marked running
    assert job.steps[1].updates == []
    assert job.log_of(1) == b""
    assert processes_of(stack.workdir / job.id) == []


def test_cancel_seen_on_a_heartbeat_cancels_the_step_and_the_job(stack: WorkerStack):
    stack.write_config(heartbeat_s=0.2)
    job = stack.api.queue_job(
        [{"name": "quiet", "command": "echo go; sleep 60"}, {"name": "next", "command": "true"}]
    )
    stack.load_secrets(job, {})
    stack.start_worker()
    wait_for(lambda: job.log_of(0) == b"go\n", "the step's output")
    stack.api.request_cancel(job)
    stack.wait_finished(job)
    assert (job.status, job.reason) == ("cancelled", "cancel requested")
    assert (job.steps[0].status, job.steps[0].exit_code) == ("cancelled", None)
    assert job.steps[1].status == "skipped"


def test_cancel_seen_on_a_log_append_cancels_the_job_without_a_heartbeat(stack: WorkerStack):
    stack.write_config(heartbeat_s=3600)
    job = stack.api.queue_job(
        [{"name": "chatty", "command": "while :; do echo tick; sleep 0.05; done"}]
    )
    stack.load_secrets(job, {})
    stack.start_worker()
    wait_for(lambda: b"tick" in job.log_of(0), "the step's output")
    stack.api.request_cancel(job)
    stack.wait_finished(job)
    assert (job.status, job.reason) == ("cancelled", "cancel requested")
    assert job.steps[0].status == "cancelled"
    assert not any("/heartbeat" in request.path for request in stack.api.received)


def test_secrets_reach_the_step_s_environment_and_never_leave_the_worker_unmasked(
    stack: WorkerStack,
):
    canary = f'canary-{secrets.token_hex(12)}"\\/'.encode()
    job = stack.api.queue_job(
        [
            {
                "name": "leak",
                "command": (
                    'printf "%s" "$CANARY" | sha256sum; '
                    'echo "plain: $CANARY"; '
                    'printf "%s" "$CANARY" | base64; '
                    'printf "xy%s" "$CANARY" | base64; '
                    'printf "%s" "$CANARY" | od -An -tx1 | tr -d " \\n"; echo; '
                    'half="${CANARY%????????????}"; printf "%s" "$half"; sleep 0.3; '
                    'printf "%s\\n" "${CANARY#"$half"}"'
                ),
            }
        ]
    )
    stack.load_secrets(job, {"CANARY": canary})
    stack.start_worker()
    stack.wait_finished(job)
    assert job.status == "succeeded", stack.worker_log()
    log = job.log_of(0)
    assert hashlib.sha256(canary).hexdigest().encode() in log  # the step saw the value
    assert log.count(b"***") >= 5
    received = stack.api.everything_received()
    worker_log = stack.worker_log().encode()
    for pattern in secret_patterns(canary):
        assert pattern not in received
        assert pattern not in worker_log
    assert b"CANARY" in worker_log  # secrets are logged by name


def test_a_secret_too_short_to_mask_is_named_in_a_warning_never_its_value(stack: WorkerStack):
    job = stack.api.queue_job([{"name": "quiet", "command": "true"}])
    # Characters no log line holds by chance (digits would: timestamps, pids, ids).
    stack.load_secrets(job, {"PIN": b"~^@"})
    stack.start_worker()
    stack.wait_finished(job)
    warnings = [e for e in stack.worker_events() if "too short to mask" in e["message"]]
    assert len(warnings) == 1
    assert warnings[0]["secret_names"] == ["PIN"]
    assert "~^@" not in stack.worker_log()


def test_a_step_s_environment_holds_nothing_of_the_worker_s_own(stack: WorkerStack):
    job = stack.api.queue_job([{"name": "env", "command": "env"}])
    stack.load_secrets(job, {"API_KEY": b"the-key-value"})
    stack.start_worker()
    stack.wait_finished(job)
    lines = job.log_of(0).decode().splitlines()
    environment = dict(line.split("=", 1) for line in lines if "=" in line)
    assert set(environment) - SHELL_ADDS == RESERVED | {"API_KEY"}
    assert environment["API_KEY"] == "***"
    assert environment["DANUBE_JOB_ID"] == job.id
    assert environment["DANUBE_JOB_NUMBER"] == str(job.number)
    assert environment["DANUBE_PIPELINE_ID"] == job.pipeline_id
    assert environment["DANUBE_STEP_NAME"] == "env"
    assert environment["HOME"] == str(stack.workdir / job.id)
    assert (environment["LANG"], environment["CI"]) == ("C.UTF-8", "true")
    assert stack.api.worker_token.encode() not in job.log_of(0)
    assert job.token.encode() not in job.log_of(0)


def test_the_workspace_is_private_to_the_job_and_removed_after_it(stack: WorkerStack):
    job = stack.api.queue_job(
        [{"name": "look", "command": 'pwd; stat -c %a "$HOME"; mkdir -p d/e; chmod 0 d'}]
    )
    stack.load_secrets(job, {})
    stack.start_worker()
    stack.wait_finished(job)
    workspace = stack.workdir / job.id
    assert job.log_of(0) == f"{workspace}\n700\n".encode()
    wait_for(lambda: not workspace.exists(), "the workspace to be removed")
    assert stack.workdir.exists()


def test_a_log_append_answered_503_is_sent_again_at_the_same_offset(stack: WorkerStack):
    stack.api.fail_log_appends(2)
    job = stack.api.queue_job([{"name": "hello", "command": "echo hello; echo world"}])
    stack.load_secrets(job, {})
    stack.start_worker()
    stack.wait_finished(job)
    assert job.status == "succeeded"
    assert job.log_of(0) == b"hello\nworld\n"
    appends = stack.api.appends(job, 0)
    assert len(appends) >= 3
    assert appends[0] == appends[1] == appends[2]
    assert appends[0][0] == 0


def test_a_job_whose_secrets_keyd_does_not_hold_fails_secrets_unavailable(stack: WorkerStack):
    job = stack.api.queue_job([{"name": "never", "command": "echo ran"}])
    stack.start_worker()
    stack.wait_finished(job)
    assert (job.status, job.reason) == ("failed", "secrets unavailable")
    assert job.steps[0].updates == []
    assert job.steps[0].status == "skipped"


def test_a_job_whose_secrets_do_not_come_leaves_no_workspace(stack: WorkerStack):
    job = stack.api.queue_job([{"name": "never", "command": "echo ran"}])
    stack.start_worker()
    stack.wait_finished(job)
    assert job.reason == "secrets unavailable"
    wait_for(lambda: not (stack.workdir / job.id).exists(), "the workspace to be removed")


def test_jobs_in_a_row_mask_their_own_secrets_whether_the_same_or_changed(stack: WorkerStack):
    """Each job masks with its own secrets, whether the last job had the same or others."""
    command = 'printf "%s" "$TOKEN" | sha256sum; echo "$TOKEN"'
    values = [b"first-value-of-the-token", b"first-value-of-the-token", b"second-value-now"]
    jobs = [stack.api.queue_job([{"name": "use", "command": command}]) for _ in values]
    for job, value in zip(jobs, values, strict=True):
        stack.load_secrets(job, {"TOKEN": value})
    stack.start_worker()
    for job, value in zip(jobs, values, strict=True):
        stack.wait_finished(job)
        assert job.status == "succeeded", stack.worker_log()
        digest = hashlib.sha256(value).hexdigest()
        assert job.log_of(0) == f"{digest}  -\n***\n".encode()


def test_a_secret_too_short_to_mask_is_warned_about_on_every_job_that_has_it(
    stack: WorkerStack,
):
    jobs = [stack.api.queue_job([{"name": "quiet", "command": "true"}]) for _ in range(2)]
    for job in jobs:
        stack.load_secrets(job, {"PIN": b"~^@"})
    stack.start_worker()
    for job in jobs:
        stack.wait_finished(job)
    warnings = [e for e in stack.worker_events() if "too short to mask" in e["message"]]
    assert sorted(w["job_id"] for w in warnings) == sorted(job.id for job in jobs)


def test_secrets_are_fetched_again_until_a_restarted_keyd_holds_them(stack: WorkerStack):
    stack.write_config(keyd_timeout_ms=3000)  # 4 x 3 s for keyd to come back
    stack.keyd.kill()
    job = stack.api.queue_job([{"name": "use", "command": 'printf "%s" "$TOKEN" | sha256sum'}])
    stack.start_worker()
    wait_for(lambda: "trying again" in stack.worker_log(), "the worker to retry")
    stack.restart_keyd()
    stack.load_secrets(job, {"TOKEN": b"after-the-restart"})
    stack.wait_finished(job)
    assert job.status == "succeeded", stack.worker_log()
    assert hashlib.sha256(b"after-the-restart").hexdigest().encode() in job.log_of(0)


def test_sigterm_to_an_idle_worker_breaks_off_its_claim_and_exits_0(stack: WorkerStack):
    stack.write_config(claim_wait_s=60)  # longer than the hang guard of the exit
    worker = stack.start_worker()
    wait_for(lambda: any("/claim" in r.path for r in stack.api.received), "a claim")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(EXIT_TIMEOUT_S) == 0, stack.worker_log()


def test_sigterm_to_the_worker_cancels_its_job_stops_its_processes_and_exits_0(
    stack: WorkerStack,
):
    job = stack.api.queue_job(
        [
            {"name": "service", "command": "sleep 300 > /dev/null 2>&1 &"},
            {"name": "long", "command": "echo started; sleep 300"},
        ]
    )
    stack.load_secrets(job, {})
    worker = stack.start_worker()
    wait_for(lambda: job.log_of(1) == b"started\n", "the second step's output")
    workspace = stack.workdir / job.id
    assert processes_of(workspace)  # the service and the step's sleep
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(EXIT_TIMEOUT_S) == 0, stack.worker_log()
    assert job.finished.is_set()
    assert (job.status, job.reason) == ("cancelled", "worker stopped")
    assert [step.status for step in job.steps] == ["succeeded", "cancelled"]
    assert processes_of(workspace) == []
    assert not workspace.exists()


def test_a_missing_token_file_refuses_to_start_with_exit_2(stack: WorkerStack):
    stack.token_file.unlink()
    worker = stack.start_worker()
    assert worker.wait(EXIT_TIMEOUT_S) == 2
    assert f"worker token file {stack.token_file} does not exist" in stack.worker_log()


def test_a_token_the_api_refuses_ends_the_worker_with_exit_2_never_printing_it(
    stack: WorkerStack,
):
    wrong = "dnb_w_" + secrets.token_urlsafe(32)
    stack.token_file.write_text(wrong + "\n")
    worker = stack.start_worker()
    assert worker.wait(EXIT_TIMEOUT_S) == 2
    assert "refused the worker's token (401)" in stack.worker_log()
    assert wrong not in stack.worker_log()


def test_an_empty_token_file_refuses_to_start_with_exit_2(stack: WorkerStack):
    stack.token_file.write_text("\n")
    worker = stack.start_worker()
    assert worker.wait(EXIT_TIMEOUT_S) == 2
    assert f"worker token file {stack.token_file} is empty" in stack.worker_log()
    assert not stack.api.received  # it never called the API
