"""The API's control client and the workers' fetch functions, against a real keyd."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from danube_shared.errors import KeydRejected, KeydUnavailable
from danube_shared.keyd_control_client import KeydControl, KeydControlClient
from danube_shared.keyd_protocol import token_sha256
from danube_shared.keyd_worker_client import (
    KeydWorkerClient,
    fetch_job_secrets,
    fetch_job_secrets_async,
)
from tests.support.keyd import KeydHome, KeydProcess


@pytest.fixture
async def client(keyd: KeydProcess) -> AsyncIterator[KeydControlClient]:
    control = KeydControlClient(keyd.home.settings.keyd)
    yield control
    await control.close()


async def load_job(client: KeydControlClient, job_id: str, token: str, **values: bytes) -> None:
    names = list(values)
    ciphertexts = await client.encrypt([(values[name], f"secret:{name}") for name in names])
    secrets = [(name, ct, f"secret:{name}") for name, ct in zip(names, ciphertexts, strict=True)]
    assert await client.job_load(job_id, token_sha256(token), 60, secrets) == len(names)


def test_the_client_satisfies_the_keyd_control_protocol(keyd_home: KeydHome) -> None:
    """KeydControlClient has every method of KeydControl, so the API can take either."""
    control: KeydControl = KeydControlClient(keyd_home.settings.keyd)
    assert callable(control.ping)


def test_token_sha256_is_sha256_of_the_utf8_token() -> None:
    """token_sha256 is what the spec says job_load carries."""
    import hashlib

    assert token_sha256("tök") == hashlib.sha256("tök".encode()).digest()


async def test_every_control_op_round_trips(client: KeydControlClient) -> None:
    """ping, encrypt, rewrap, job_load, job_drop, stats, keys_reload and audit_verify
    work through the client."""
    ping = await client.ping()
    assert len(ping.key_id) == 4
    ciphertexts = await client.encrypt([(b"one", "secret:1"), (b"two", "secret:2")])
    assert all(ct[0] == 1 and ct[1:5] == ping.key_id for ct in ciphertexts)
    rewrapped = await client.rewrap(list(zip(ciphertexts, ["secret:1", "secret:2"], strict=True)))
    assert [ct[1:5] for ct in rewrapped] == [ping.key_id] * 2
    assert rewrapped != ciphertexts  # sealed again, with new nonces
    assert (
        await client.job_load("j", token_sha256("t"), 60, [("ONE", rewrapped[0], "secret:1")]) == 1
    )
    stats = await client.stats()
    assert stats["jobs_cached"] == 1
    assert stats["encryptions"] == {ping.key_id.hex(): 4}
    reloaded = await client.keys_reload()
    assert (reloaded.key_id, reloaded.key_ids) == (ping.key_id, [ping.key_id])
    verdict = await client.audit_verify()
    # job_load, rewrap and keys_reload so far, each one line.
    assert (verdict.records, verdict.intact, verdict.first_bad_line) == (3, True, None)
    assert stats["boot_id"] == ping.boot_id
    assert set(stats) >= {"requests", "errors", "secrets_cached"}
    assert await client.job_drop("j") is True
    assert await client.job_drop("j") is False


async def test_an_error_reply_raises_keyd_rejected_with_its_code(client: KeydControlClient) -> None:
    """A ciphertext bound to another context: KeydRejected, reason decrypt_failed."""
    [ciphertext] = await client.encrypt([(b"v", "secret:a")])
    with pytest.raises(KeydRejected) as rejected:
        await client.rewrap([(ciphertext, "secret:b")])
    assert rejected.value.reason == "decrypt_failed"


async def test_64_requests_in_flight_each_get_their_own_reply(client: KeydControlClient) -> None:
    """64 concurrent encrypts over one connection: every reply matches its request."""
    plaintexts = [f"value-{i}".encode() for i in range(64)]
    ciphertexts = await asyncio.gather(
        *(client.encrypt([(p, f"secret:{i}")]) for i, p in enumerate(plaintexts))
    )
    secrets = [(f"S{i}", ct[0], f"secret:{i}") for i, ct in enumerate(ciphertexts)]
    assert await client.job_load("j64", token_sha256("t"), 60, secrets) == 64
    opened = fetch_job_secrets(client.path.parent, "j64", "t", timeout_ms=2000)
    assert opened == {f"S{i}": p for i, p in enumerate(plaintexts)}


def hang_guard_s(keyd_home: KeydHome) -> float:
    """Ten times the client's deadline: an elapsed time above it is a hang, not slowness.
    (The suite never fails on a timing: no bound here is tighter than this.)"""
    return 10 * keyd_home.settings.keyd.request_timeout_ms / 1000


async def test_an_absent_socket_fails_without_waiting_for_a_reply_naming_it(
    keyd_home: KeydHome,
) -> None:
    """No keyd (no socket file): KeydUnavailable saying the socket does not exist (the
    client never sent the request to wait out its deadline), naming the socket path."""
    client = KeydControlClient(keyd_home.settings.keyd)
    started = time.monotonic()
    with pytest.raises(KeydUnavailable, match=str(keyd_home.control_path)) as unavailable:
        await client.ping()
    assert "does not exist" in str(unavailable.value)
    assert "not answering" not in str(unavailable.value)
    # Guards against a hang, not a speed.
    assert time.monotonic() - started < hang_guard_s(keyd_home)
    await client.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can chown to another uid")
async def test_a_socket_owned_by_another_uid_is_refused(keyd: KeydProcess) -> None:
    """A socket file whose owner is not keyd's uid (socket_dir's owner) is not used."""
    os.chown(keyd.home.control_path, 65534, -1)
    client = KeydControlClient(keyd.home.settings.keyd)
    with pytest.raises(KeydUnavailable, match="owned by uid 65534"):
        await client.ping()
    await client.close()


async def test_a_pinned_expected_uid_is_enforced(keyd: KeydProcess) -> None:
    """expected_uid, when given, is what the socket's owner must be."""
    client = KeydControlClient(keyd.home.settings.keyd, expected_uid=os.geteuid() + 1)
    with pytest.raises(KeydUnavailable, match="refusing to use it"):
        await client.ping()
    await client.close()


async def test_a_regular_file_in_place_of_the_socket_is_refused(keyd_home: KeydHome) -> None:
    """Something that is not a socket at the socket path is refused."""
    keyd_home.socket_dir.mkdir(mode=0o750)
    keyd_home.control_path.write_bytes(b"")
    client = KeydControlClient(keyd_home.settings.keyd)
    with pytest.raises(KeydUnavailable, match="is not a socket"):
        await client.ping()
    await client.close()


async def test_a_silent_keyd_times_out_then_the_client_recovers(
    keyd: KeydProcess, client: KeydControlClient
) -> None:
    """keyd stopped (SIGSTOP): KeydUnavailable saying it is not answering, not before
    the deadline; once keyd runs again the same client is served."""
    await client.ping()
    os.kill(keyd.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(KeydUnavailable, match="not answering") as unavailable:
            await client.ping()
        elapsed = time.monotonic() - started
        assert str(keyd.home.control_path) in str(unavailable.value)
        # The client waited out its 1 s deadline (a lower bound cannot fail on a slow
        # machine); the upper bound guards against a hang, not a speed.
        assert 0.9 <= elapsed < hang_guard_s(keyd.home)
    finally:
        os.kill(keyd.pid, signal.SIGCONT)
    assert (await client.ping()).key_id


async def test_concurrent_requests_all_fail_when_keyd_is_silent(
    keyd: KeydProcess, client: KeydControlClient
) -> None:
    """With keyd stopped, every in-flight request ends in KeydUnavailable; none hangs."""
    await client.ping()
    os.kill(keyd.pid, signal.SIGSTOP)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(client.ping() for _ in range(10)), return_exceptions=True), timeout=10
        )
    finally:
        os.kill(keyd.pid, signal.SIGCONT)
    assert all(isinstance(result, KeydUnavailable) for result in results)


async def test_requests_queued_behind_a_reset_fail_cleanly(
    keyd: KeydProcess, client: KeydControlClient
) -> None:
    """keyd killed; a first wave of requests times out and resets the connection while a
    second wave still waits to be sent: every request ends in KeydUnavailable (never a
    bare CancelledError) and asyncio reports no unretrieved exception."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    await client.ping()
    keyd.kill()
    first = [asyncio.create_task(client.ping()) for _ in range(5)]
    await asyncio.sleep(0.5)
    second = [asyncio.create_task(client.ping()) for _ in range(5)]
    results = await asyncio.gather(*first, *second, return_exceptions=True)
    assert [type(result) for result in results] == [KeydUnavailable] * 10
    del first, second, results
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []


async def test_the_client_recovers_on_its_own_after_kill_9_and_restart(
    keyd: KeydProcess, start_keyd: Callable[..., KeydProcess], client: KeydControlClient
) -> None:
    """keyd killed with SIGKILL: requests fail with KeydUnavailable; after a restart the
    same client object is served by the new keyd (a new boot_id)."""
    first = await client.ping()
    keyd.kill()
    with pytest.raises(KeydUnavailable):
        await client.ping()
    start_keyd(keyd.home)
    second = await client.ping()
    assert second.boot_id != first.boot_id
    assert second.key_id == first.key_id


async def test_a_restart_between_requests_is_invisible(
    keyd: KeydProcess, start_keyd: Callable[..., KeydProcess], client: KeydControlClient
) -> None:
    """keyd restarted while the client was idle: the next request just works."""
    first = await client.ping()
    keyd.stop()
    start_keyd(keyd.home)
    assert (await client.ping()).boot_id != first.boot_id


async def test_close_then_use_again_reconnects(client: KeydControlClient) -> None:
    """After close() the client may be used again; it reconnects lazily."""
    await client.ping()
    await client.close()
    assert (await client.ping()).key_id


async def test_worker_fetches_its_jobs_secrets_sync_and_async(
    keyd: KeydProcess, client: KeydControlClient
) -> None:
    """fetch_job_secrets (sync, from the socket dir or the settings) and its async twin
    return the job's secrets for the right token."""
    await load_job(client, "job-7", "tok", API_KEY=b"k-123", DB=b"pw")
    expected = {"API_KEY": b"k-123", "DB": b"pw"}
    by_dir = await asyncio.to_thread(fetch_job_secrets, keyd.home.socket_dir, "job-7", "tok", 2000)
    by_settings = await asyncio.to_thread(fetch_job_secrets, keyd.home.settings, "job-7", "tok")
    assert by_dir == expected
    assert by_settings == expected
    assert await fetch_job_secrets_async(str(keyd.home.socket_dir), "job-7", "tok") == expected


async def test_worker_with_a_wrong_token_is_unauthorized(
    keyd: KeydProcess, client: KeydControlClient
) -> None:
    """A wrong token: KeydRejected with reason unauthorized, sync and async."""
    await load_job(client, "job-7", "tok", A=b"a")
    with pytest.raises(KeydRejected) as rejected:
        await asyncio.to_thread(fetch_job_secrets, keyd.home.socket_dir, "job-7", "nope")
    assert rejected.value.reason == "unauthorized"
    with pytest.raises(KeydRejected) as rejected_async:
        await fetch_job_secrets_async(keyd.home.socket_dir, "job-7", "nope")
    assert rejected_async.value.reason == "unauthorized"


async def test_worker_for_a_dropped_job_gets_not_found(
    keyd: KeydProcess, client: KeydControlClient
) -> None:
    """After job_drop the worker's fetch is KeydRejected(not_found)."""
    await load_job(client, "job-7", "tok", A=b"a")
    await client.job_drop("job-7")
    with pytest.raises(KeydRejected) as rejected:
        await fetch_job_secrets_async(keyd.home.socket_dir, "job-7", "tok")
    assert rejected.value.reason == "not_found"


def test_worker_without_keyd_fails_fast(tmp_path: Path) -> None:
    """No worker socket: KeydUnavailable at once, naming it."""
    with pytest.raises(KeydUnavailable, match=r"keyd-worker\.sock does not exist"):
        fetch_job_secrets(tmp_path, "job", "tok", 5000)


def test_worker_times_out_on_a_silent_keyd(keyd: KeydProcess) -> None:
    """keyd stopped: the sync fetch raises KeydUnavailable after its deadline."""
    os.kill(keyd.pid, signal.SIGSTOP)
    try:
        with pytest.raises(KeydUnavailable, match="not answering"):
            fetch_job_secrets(keyd.home.socket_dir, "job", "tok", 300)
    finally:
        os.kill(keyd.pid, signal.SIGCONT)


async def test_worker_async_times_out_on_a_silent_keyd(keyd: KeydProcess) -> None:
    """keyd stopped: the async fetch raises KeydUnavailable after its deadline."""
    os.kill(keyd.pid, signal.SIGSTOP)
    try:
        with pytest.raises(KeydUnavailable, match="not answering"):
            await fetch_job_secrets_async(keyd.home.socket_dir, "job", "tok", 300)
    finally:
        os.kill(keyd.pid, signal.SIGCONT)


async def test_the_worker_s_kept_client_fetches_job_after_job_on_one_connection(
    keyd: KeydProcess, client: KeydControlClient
) -> None:
    """KeydWorkerClient returns each job's secrets for its token, and refuses a wrong
    token as `unauthorized`, request after request on the same client."""
    await load_job(client, "job-1", "tok-1", A=b"one")
    await load_job(client, "job-2", "tok-2", B=b"two")
    worker = KeydWorkerClient(keyd.home.settings)
    try:
        assert await worker.job_secrets("job-1", "tok-1") == {"A": b"one"}
        with pytest.raises(KeydRejected) as rejected:
            await worker.job_secrets("job-2", "tok-1")
        assert rejected.value.reason == "unauthorized"
        assert await worker.job_secrets("job-2", "tok-2") == {"B": b"two"}
    finally:
        await worker.close()


async def test_the_worker_s_kept_client_is_served_by_a_restarted_keyd(
    keyd: KeydProcess,
    start_keyd: Callable[..., KeydProcess],
    client: KeydControlClient,
) -> None:
    """keyd killed with SIGKILL under a KeydWorkerClient: the fetch fails with
    KeydUnavailable; once keyd is back (and holds the job again) the same client gets
    the secrets."""
    await load_job(client, "job-1", "tok-1", A=b"one")
    worker = KeydWorkerClient(keyd.home.socket_dir, 500)
    try:
        assert await worker.job_secrets("job-1", "tok-1") == {"A": b"one"}
        keyd.kill()
        with pytest.raises(KeydUnavailable):
            await worker.job_secrets("job-1", "tok-1")
        start_keyd(keyd.home)
        await load_job(client, "job-1", "tok-1", A=b"one")
        assert await worker.job_secrets("job-1", "tok-1") == {"A": b"one"}
    finally:
        await worker.close()


async def test_the_worker_s_kept_client_times_out_on_a_silent_keyd(keyd: KeydProcess) -> None:
    """keyd stopped: KeydWorkerClient raises KeydUnavailable after its deadline."""
    worker = KeydWorkerClient(keyd.home.socket_dir, 300)
    os.kill(keyd.pid, signal.SIGSTOP)
    try:
        with pytest.raises(KeydUnavailable, match="not answering"):
            await worker.job_secrets("job", "tok")
    finally:
        os.kill(keyd.pid, signal.SIGCONT)
        await worker.close()
