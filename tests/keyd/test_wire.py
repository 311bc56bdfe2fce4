"""keyd over its real ipc:// sockets, spoken to by hand: every error code on the wire,
bad frames of every kind followed by a request that is answered, wrong-socket ops, a slow
peer, and the peer-uid check by the kernel's credentials."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import zmq

from danube_shared.keyd_protocol import MAX_ITEMS, MAX_MESSAGE_BYTES
from tests.support.keyd import KeydHome, KeydProcess, RawPeer

PING = {"v": 1, "id": 1, "op": "ping"}


def test_ping_answers_on_both_sockets_with_the_same_boot_id(keyd: KeydProcess) -> None:
    """ping works on the control and the worker socket; both name the same keyd."""
    with RawPeer(keyd.home.control_path) as control, RawPeer(keyd.home.worker_path) as worker:
        on_control = control.ask(PING)
        on_worker = worker.ask(PING)
    assert on_control is not None
    assert on_worker is not None
    assert on_control["ok"] is True
    assert on_worker["ok"] is True
    assert on_control["boot_id"] == on_worker["boot_id"]
    assert len(on_control["key_id"]) == 4


def test_every_wire_error_code_can_be_provoked(keyd: KeydProcess) -> None:
    """bad_request, forbidden, unauthorized, not_found, decrypt_failed and too_large all
    come back over the sockets as error replies with the request's id. (`internal` needs
    a bug in keyd; the in-process dispatcher tests provoke it.)"""
    token_sha = hashlib.sha256(b"right").digest()
    with RawPeer(keyd.home.control_path) as control, RawPeer(keyd.home.worker_path) as worker:
        ciphertext = control.ask(
            {
                "v": 1,
                "id": 2,
                "op": "encrypt",
                "items": [{"plaintext": b"p", "context": "secret:1"}],
            }
        )
        assert ciphertext is not None
        loaded = control.ask(
            {
                "v": 1,
                "id": 3,
                "op": "job_load",
                "job_id": "job-1",
                "token_sha256": token_sha,
                "ttl_s": 60,
                "secrets": [
                    {"name": "P", "ciphertext": ciphertext["items"][0], "context": "secret:1"}
                ],
            }
        )
        assert loaded == {"v": 1, "id": 3, "ok": True, "loaded": 1}
        replies = {
            "bad_request": control.ask({"v": 1, "id": 10, "op": "nope"}),
            "forbidden": worker.ask({"v": 1, "id": 11, "op": "encrypt", "items": []}),
            "unauthorized": worker.ask(
                {"v": 1, "id": 12, "op": "job_secrets", "job_id": "job-1", "token": "wrong"}
            ),
            "not_found": worker.ask(
                {"v": 1, "id": 13, "op": "job_secrets", "job_id": "job-2", "token": "right"}
            ),
            "decrypt_failed": control.ask(
                {
                    "v": 1,
                    "id": 14,
                    "op": "rewrap",
                    "items": [{"ciphertext": ciphertext["items"][0], "context": "secret:2"}],
                }
            ),
            "too_large": control.ask(
                {
                    "v": 1,
                    "id": 15,
                    "op": "encrypt",
                    "items": [{"plaintext": b"", "context": "c"}] * (MAX_ITEMS + 1),
                }
            ),
        }
        right = worker.ask(
            {"v": 1, "id": 16, "op": "job_secrets", "job_id": "job-1", "token": "right"}
        )
    for code, reply in replies.items():
        assert reply is not None, code
        assert (reply["ok"], reply["error"]) == (False, code)
        assert isinstance(reply["message"], str)
        assert reply["message"]
    assert [reply["id"] for reply in replies.values() if reply] == [10, 11, 12, 13, 14, 15]
    assert right == {"v": 1, "id": 16, "ok": True, "secrets": {"P": b"p"}}


def test_every_op_on_the_wrong_socket_is_forbidden(keyd: KeydProcess) -> None:
    """Each control op on the worker socket, and job_secrets on the control socket, is
    answered forbidden with its id, whatever its fields."""
    with RawPeer(keyd.home.control_path) as control, RawPeer(keyd.home.worker_path) as worker:
        control_ops = ("encrypt", "rewrap", "job_load", "job_drop", "stats", "keys_reload")
        for request_id, op in enumerate((*control_ops, "audit_verify")):
            reply = worker.ask({"v": 1, "id": request_id, "op": op})
            assert reply == {
                "v": 1,
                "id": request_id,
                "ok": False,
                "error": "forbidden",
                "message": f"op {op!r} is not allowed on the worker socket",
            }
        reply = control.ask({"v": 1, "id": 9, "op": "job_secrets", "job_id": "j", "token": "t"})
        assert reply is not None
        assert (reply["id"], reply["error"]) == (9, "forbidden")


def test_a_plain_req_socket_works(keyd: KeydProcess) -> None:
    """The framing is REQ-style: a bare zmq.REQ socket gets its reply."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"ipc://{keyd.home.worker_path}")
        sock.send(msgspec.msgpack.encode(PING))
        assert sock.poll(2000)
        assert msgspec.msgpack.decode(sock.recv())["ok"] is True
    finally:
        sock.close(linger=0)
        context.term()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe garbage \x00",
        os.urandom(4096),
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode("ping"),
        msgspec.msgpack.encode(None),
        msgspec.msgpack.encode({"v": 1, "id": 4, "op": "launch_missiles"}),
        msgspec.msgpack.encode(
            {"v": 1, "id": 4, "op": "encrypt", "items": [{"plaintext": "text", "context": 5}]}
        ),
        msgspec.msgpack.encode({"v": 1, "id": 4, "op": "job_drop", "job_id": ["a"]}),
    ],
    ids=[
        "empty",
        "garbage",
        "random",
        "array",
        "string",
        "nil",
        "unknown-op",
        "wrong-types",
        "wrong-type-job-id",
    ],
)
def test_a_malformed_frame_gets_bad_request_and_the_next_request_is_answered(
    keyd: KeydProcess, payload: bytes
) -> None:
    """Garbage, a non-map, an unknown op or wrong types: bad_request, then keyd serves on."""
    with RawPeer(keyd.home.control_path) as peer:
        reply = peer.ask_raw(payload)
        assert reply is not None
        assert (reply["ok"], reply["error"]) == (False, "bad_request")
        assert peer.ask(PING) is not None


@pytest.mark.parametrize(
    "frames",
    [[b"only-one-frame"], [b"not-empty", b"payload"], [b"", b"a", b"b"], [b"", b"", b""]],
    ids=["no-delimiter", "non-empty-delimiter", "extra-frame", "three-empty"],
)
def test_a_bad_envelope_is_dropped_and_the_next_request_is_answered(
    keyd: KeydProcess, frames: list[bytes]
) -> None:
    """A message not shaped [delimiter, request] gets no reply; keyd counts it and serves on."""
    with RawPeer(keyd.home.control_path) as peer:
        peer.send_frames(frames)
        assert peer.receive(timeout_ms=200) is None
        stats = peer.ask({"v": 1, "id": 9, "op": "stats"})
    assert stats is not None
    assert stats["dropped_messages"] == 1


def test_an_oversized_frame_drops_that_connection_only(keyd: KeydProcess) -> None:
    """A frame over MAX_MESSAGE_BYTES is cut off by libzmq; another peer is served at once
    and the offender, reconnected, is served again."""
    with RawPeer(keyd.home.control_path) as offender, RawPeer(keyd.home.control_path) as other:
        offender.send_frames([b"", bytes(MAX_MESSAGE_BYTES + 1)])
        assert offender.receive(timeout_ms=300) is None
        assert other.ask(PING) is not None
        assert offender.ask(PING, timeout_ms=3000) is not None


def test_a_peer_that_never_reads_does_not_stall_others(keyd: KeydProcess) -> None:
    """A peer that floods requests and reads no reply is bounded by the high-water marks;
    another peer's request is still answered."""
    payload = msgspec.msgpack.encode(PING)
    with RawPeer(keyd.home.control_path) as flooder, RawPeer(keyd.home.control_path) as other:
        for _ in range(20_000):
            try:
                flooder.socket.send_multipart([b"", payload], flags=zmq.NOBLOCK)
            except zmq.Again:  # the flooder's own queue is full
                break
        assert other.ask(PING, timeout_ms=5000) is not None


# The peer-uid check, with a child process that switches to another uid before it
# connects, so that the kernel reports that uid to keyd through ZAP.

_AS_UID = """
import json, os, sys
import msgspec, zmq
path, uid = sys.argv[1], int(sys.argv[2])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
context = zmq.Context()
sock = context.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect("ipc://" + path)
sock.send_multipart([b"", msgspec.msgpack.encode({"v": 1, "id": 1, "op": "ping"})])
answered = bool(sock.poll(800))
sock.close(linger=0)
context.term()
print(json.dumps({"answered": answered}))
"""
NOBODY = 65534


def _ping_as(uid: int, path: Path) -> bool:
    result = subprocess.run(
        [sys.executable, "-c", _AS_UID, str(path), str(uid)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(result.stdout)["answered"]


@pytest.fixture
def shared_with_nobody(new_home, start_keyd) -> KeydProcess:
    """keyd with uid 65534 allowed on the worker socket only, and the files opened up to
    group 65534 so that only keyd's peer-uid check stands between that uid and each
    socket."""
    home: KeydHome = new_home(worker_uids=[NOBODY])
    home.root.chmod(0o711)
    keyd = start_keyd(home)
    for path in (home.socket_dir, home.control_path, home.worker_path):
        os.chown(path, -1, NOBODY)
    return keyd


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_an_allowed_worker_uid_is_served_on_the_worker_socket(
    shared_with_nobody: KeydProcess,
) -> None:
    """uid 65534, listed in worker_uids, gets its ping answered on the worker socket."""
    assert _ping_as(NOBODY, shared_with_nobody.home.worker_path) is True


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_a_worker_uid_is_refused_on_the_control_socket(shared_with_nobody: KeydProcess) -> None:
    """uid 65534 is not in control_uids: ZAP refuses the connection, no reply ever comes,
    and keyd logs and counts the refusal with the peer's uid."""
    assert _ping_as(NOBODY, shared_with_nobody.home.control_path) is False
    with RawPeer(shared_with_nobody.home.control_path) as peer:
        stats = peer.ask({"v": 1, "id": 2, "op": "stats"})
    assert stats is not None
    assert stats["denied_connections"] >= 1
    refused = [
        json.loads(line)
        for line in shared_with_nobody.home.log_text().splitlines()
        if '"connection refused"' in line
    ]
    assert refused
    assert refused[0]["peer_uid"] == NOBODY
    assert refused[0]["domain"] == "danube-keyd-control"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_an_unlisted_uid_is_refused_on_the_worker_socket(new_home, start_keyd) -> None:
    """With worker_uids empty, uid 65534 is refused on the worker socket even though the
    file permissions would let it connect."""
    home = new_home()
    home.root.chmod(0o711)
    keyd = start_keyd(home)
    for path in (home.socket_dir, home.worker_path):
        os.chown(path, -1, NOBODY)
    assert _ping_as(NOBODY, keyd.home.worker_path) is False
