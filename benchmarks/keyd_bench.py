"""The keyd targets: `keyd_batch` (a worker's `job_secrets` of 100 secrets of 64 B, over
in-process AES-GCM decryption of the same 100) and `keyd_pipelined` (`encrypt` requests
per second with 64 in flight, over a bare pyzmq ROUTER echo with the same framing and
message sizes), plus keyd's resident memory with 10,000 jobs cached (no target yet)."""

from __future__ import annotations

import os
import secrets
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
import zmq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from benchmarks.processes import (
    CpuShare,
    cpu_share,
    on_one_cpu,
    python_module,
    rss_mib,
    running,
)
from benchmarks.report import Report
from benchmarks.stack import Stack, danube_stack
from danube_shared import keyd_protocol as wire

_encode = msgspec.msgpack.Encoder().encode
_decode_head = msgspec.msgpack.Decoder(wire.ReplyHead).decode


@dataclass
class Sizes:
    repeats: int
    batch_rounds: int
    pipelined_requests: int
    memory_jobs: int


QUICK = Sizes(repeats=3, batch_rounds=200, pipelined_requests=10_000, memory_jobs=2_000)
FULL = Sizes(repeats=5, batch_rounds=1_000, pipelined_requests=50_000, memory_jobs=10_000)


def _req(socket: zmq.Socket[bytes], payload: bytes) -> bytes:
    socket.send_multipart([b"", payload])
    frames = socket.recv_multipart()
    head = _decode_head(frames[-1])
    if not head.ok:
        raise RuntimeError(f"keyd refused: {msgspec.msgpack.decode(frames[-1])}")
    return frames[-1]


def _connect(context: zmq.Context[zmq.Socket[bytes]], path: Path) -> zmq.Socket[bytes]:
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    # A benchmark stops by itself: a reply that never comes is an error, not a hang.
    socket.setsockopt(zmq.RCVTIMEO, 30_000)
    socket.connect(wire.endpoint(path))
    return socket


def run(report: Report, sizes: Sizes) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with danube_stack(with_api=False) as stack:
            control = _connect(context, wire.control_socket_path(stack.socket_dir))
            worker = _connect(context, wire.worker_socket_path(stack.socket_dir))
            _batch(report, sizes, stack, zmq_context=context, control=control, worker=worker)
            _pipelined(report, sizes, stack, context, control)
            control.close()
            worker.close()
        # A fresh keyd, so the figure is the cache's alone.
        with danube_stack(with_api=False) as stack:
            control = _connect(context, wire.control_socket_path(stack.socket_dir))
            _memory(report, sizes, stack, control)
            control.close()
    finally:
        context.term()


def _encrypt(
    control: zmq.Socket[bytes], plaintexts: list[bytes], contexts: list[str]
) -> list[bytes]:
    request = wire.EncryptRequest(
        v=1,
        id=1,
        items=[
            wire.EncryptItem(plaintext=p, context=c)
            for p, c in zip(plaintexts, contexts, strict=True)
        ],
    )
    return msgspec.msgpack.decode(_req(control, _encode(request)), type=wire.ItemsReply).items


def _batch(
    report: Report,
    sizes: Sizes,
    stack: Stack,
    *,
    zmq_context: zmq.Context[zmq.Socket[bytes]],
    control: zmq.Socket[bytes],
    worker: zmq.Socket[bytes],
) -> None:
    plaintexts = [os.urandom(64) for _ in range(100)]
    contexts = [f"secret:bench-{i}" for i in range(100)]
    ciphertexts = _encrypt(control, plaintexts, contexts)
    token = secrets.token_urlsafe(32)
    load = wire.JobLoadRequest(
        v=1,
        id=2,
        job_id="bench-job",
        token_sha256=wire.token_sha256(token),
        ttl_s=3600,
        secrets=[
            wire.JobSecret(name=f"S{i}", ciphertext=c, context=x)
            for i, (c, x) in enumerate(zip(ciphertexts, contexts, strict=True))
        ],
    )
    _req(control, _encode(load))
    fetch = _encode(wire.JobSecretsRequest(v=1, id=3, job_id="bench-job", token=token))
    key = (stack.home / "keys" / "encryption.key").read_bytes()
    aead = AESGCM(key)

    def in_process() -> None:
        for ciphertext, context in zip(ciphertexts, contexts, strict=True):
            aead.decrypt(ciphertext[5:17], ciphertext[17:], ciphertext[:5] + context.encode())

    def through_keyd() -> None:
        reply = msgspec.msgpack.decode(_req(worker, fetch), type=wire.JobSecretsReply)
        if len(reply.secrets) != 100:
            raise RuntimeError("job_secrets returned the wrong number of secrets")

    # Reported, not part of the target: the round trip of the same request and reply
    # sizes through a bare pyzmq ROUTER echo, the floor under any answer from keyd.
    reply_size = len(_req_raw(worker, fetch))
    echo_path = stack.home / "echo-batch.sock"
    with running(
        python_module("benchmarks.zmq_echo", wire.endpoint(echo_path), str(reply_size))
    ) as echo:
        echo_socket = _connect(zmq_context, echo_path)
        _req_raw(echo_socket, fetch)  # connected and warm

        def through_echo() -> None:
            _req_raw(echo_socket, fetch)

        calls = {"base": in_process, "keyd": through_keyd, "echo": through_echo}
        free = _alternately(calls, sizes)
        # Informational, not the target: the same three with this process, keyd and the
        # echo confined to one CPU, where a round trip's wake-ups need no other CPU.
        keyd_pid = stack.keyd.pid if stack.keyd is not None else os.getpid()
        with on_one_cpu([keyd_pid, echo.pid]):
            pinned = _alternately(calls, sizes)
        echo_socket.close()
    ratio = free["keyd"] / free["base"]
    report.target("keyd_batch", ratio, 2.0, higher_is_better=False)
    report.raw(
        f"keyd_batch: job_secrets of 100 x 64 B {free['keyd'] * 1e6:.0f} us, "
        f"in-process AES-GCM decrypt of 100 {free['base'] * 1e6:.0f} us "
        f"(medians of per-call times, {sizes.repeats} x {sizes.batch_rounds} calls); "
        f"floor: bare ROUTER echo round trip of the same sizes "
        f"({len(fetch)} B request, {reply_size} B reply) "
        f"{free['echo'] * 1e6:.0f} us"
    )
    report.raw(
        f"keyd_batch with this process, keyd and the echo on one CPU (informational: no "
        f"wake-up crosses CPUs): job_secrets {pinned['keyd'] * 1e6:.0f} us, decrypt "
        f"{pinned['base'] * 1e6:.0f} us, ratio {pinned['keyd'] / pinned['base']:.2f}; echo "
        f"{pinned['echo'] * 1e6:.0f} us"
    )


def _alternately(calls: Mapping[str, Callable[[], None]], sizes: Sizes) -> dict[str, float]:
    """Each call's median per-call time, the calls taking turns repeat by repeat, so that
    all see the same load on a shared machine (measured one after the other, a load
    change between them moved the ratio by more than keyd's own cost did)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(sizes.repeats):
        for name, call in calls.items():
            times[name] += _time_each(call, sizes.batch_rounds, 1)
    return {name: statistics.median(each) for name, each in times.items()}


def _time_each(call: object, rounds: int, repeats: int) -> list[float]:
    """Median per-call time of each repeat."""
    assert callable(call)  # noqa: S101 -- typed as object to accept closures without ceremony
    medians: list[float] = []
    for _ in range(repeats):
        times: list[float] = []
        for _ in range(rounds):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return medians


def _pump(socket: zmq.Socket[bytes], payload: bytes, total: int, in_flight: int) -> float:
    """Requests per second with `in_flight` outstanding at all times."""
    sent = received = 0
    start = time.perf_counter()
    while sent < min(in_flight, total):
        socket.send_multipart([b"", payload])
        sent += 1
    while received < total:
        socket.recv_multipart()
        received += 1
        if sent < total:
            socket.send_multipart([b"", payload])
            sent += 1
    return total / (time.perf_counter() - start)


def _pipelined(
    report: Report,
    sizes: Sizes,
    stack: Stack,
    context: zmq.Context[zmq.Socket[bytes]],
    control: zmq.Socket[bytes],
) -> None:
    request = _encode(
        wire.EncryptRequest(
            v=1, id=7, items=[wire.EncryptItem(plaintext=os.urandom(64), context="secret:0190c0de")]
        )
    )
    reply_size = len(_req(control, request))
    echo_path = stack.home / "echo.sock"
    keyd_pid = stack.keyd.pid if stack.keyd is not None else 0
    with running(
        python_module("benchmarks.zmq_echo", wire.endpoint(echo_path), str(reply_size))
    ) as echo:
        echo_socket = _connect(context, echo_path)
        _req_raw(echo_socket, request)  # connected and warm
        _pump(control, request, 2_000, 64)  # warm keyd
        keyd_rates: list[float] = []
        echo_rates: list[float] = []
        keyd_cpu: list[CpuShare] = []
        echo_cpu: list[CpuShare] = []
        for _ in range(sizes.repeats):
            with cpu_share(echo.pid, into=echo_cpu):
                echo_rates.append(_pump(echo_socket, request, sizes.pipelined_requests, 64))
            with cpu_share(keyd_pid, into=keyd_cpu):
                keyd_rates.append(_pump(control, request, sizes.pipelined_requests, 64))
        echo_socket.close()
    ratio = statistics.median(keyd_rates) / statistics.median(echo_rates)
    report.target("keyd_pipelined", ratio, 0.8, higher_is_better=True)
    report.raw(
        f"keyd_pipelined: encrypt {statistics.median(keyd_rates):.0f} req/s, bare ROUTER echo "
        f"{statistics.median(echo_rates):.0f} req/s ({len(request)} B requests, {reply_size} B "
        f"replies, 64 in flight); keyd {keyd_cpu[-1].describe()}; echo {echo_cpu[-1].describe()}"
    )


def _req_raw(socket: zmq.Socket[bytes], payload: bytes) -> bytes:
    socket.send_multipart([b"", payload])
    return socket.recv_multipart()[-1]


def _memory(report: Report, sizes: Sizes, stack: Stack, control: zmq.Socket[bytes]) -> None:
    """keyd's resident memory with many jobs cached, each with 64 secrets of 64 B."""
    if stack.keyd is None:
        return
    before = rss_mib(stack.keyd.pid)
    contexts = [f"secret:mem-{i}" for i in range(64)]
    ciphertexts = _encrypt(control, [os.urandom(64) for _ in range(64)], contexts)
    job_secrets = [
        wire.JobSecret(name=f"SECRET_{i}", ciphertext=c, context=x)
        for i, (c, x) in enumerate(zip(ciphertexts, contexts, strict=True))
    ]
    digest = wire.token_sha256("memory")
    for job in range(sizes.memory_jobs):
        load = wire.JobLoadRequest(
            v=1, id=job, job_id=f"mem-{job}", token_sha256=digest, ttl_s=3600, secrets=job_secrets
        )
        _req(control, _encode(load))
    after = rss_mib(stack.keyd.pid)
    report.raw(
        f"keyd rss: {before:.1f} MiB idle, {after:.1f} MiB with {sizes.memory_jobs} jobs x 64 "
        f"secrets x 64 B cached (no target yet)"
    )
