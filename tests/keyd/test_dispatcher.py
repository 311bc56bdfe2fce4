"""keyd's dispatcher in process: every op, every error code, and (hypothesis) that no
input raises past it."""

# ruff: noqa: S105, S106 -- job tokens here are test data, not credentials

from __future__ import annotations

import hashlib
import os
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from danube_keyd.aead import Aead
from danube_keyd.dispatcher import Dispatcher
from danube_keyd.secret_cache import SecretCache
from danube_shared.keyd_protocol import (
    ALL_OPS,
    ERROR_CODES,
    MAX_CONTEXT_BYTES,
    MAX_ITEMS,
    MAX_PLAINTEXT_BYTES,
    Role,
)

TOKEN = "tok-1"


@pytest.fixture
def aead() -> Aead:
    return Aead(os.urandom(32))


@pytest.fixture
def dispatcher(aead: Aead) -> Dispatcher:
    return Dispatcher(aead, SecretCache(3600, max_jobs=2), boot_id="boot-1")


def ask(dispatcher: Dispatcher, message: Any, role: Role = "control") -> dict[str, Any]:
    reply = dispatcher.handle(role, msgspec.msgpack.encode(message))
    return msgspec.msgpack.decode(bytes(reply))


def req(op: str, request_id: int = 7, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": request_id, "op": op, **fields}


def load_job(dispatcher: Dispatcher, aead: Aead, job_id: str = "job-1", **values: bytes) -> None:
    secrets = [
        {
            "name": name,
            "ciphertext": aead.encrypt(value, f"secret:{name}"),
            "context": f"secret:{name}",
        }
        for name, value in values.items()
    ]
    reply = ask(
        dispatcher,
        req(
            "job_load",
            job_id=job_id,
            token_sha256=hashlib.sha256(TOKEN.encode()).digest(),
            ttl_s=60,
            secrets=secrets,
        ),
    )
    assert reply["ok"], reply


def test_ping_answers_key_id_and_boot_id(dispatcher: Dispatcher, aead: Aead) -> None:
    """ping echoes the id and answers the 4-byte key id and the boot id."""
    assert ask(dispatcher, req("ping", 42)) == {
        "v": 1,
        "id": 42,
        "ok": True,
        "key_id": aead.key_id,
        "boot_id": "boot-1",
    }


def test_ping_is_allowed_on_the_worker_socket(dispatcher: Dispatcher) -> None:
    """ping works on both sockets."""
    assert ask(dispatcher, req("ping"), role="worker")["ok"] is True


def test_encrypt_then_decrypt_round_trips_in_order(dispatcher: Dispatcher, aead: Aead) -> None:
    """encrypt answers item for item; decrypt of those answers the plaintexts in order."""
    items = [{"plaintext": f"v{i}".encode(), "context": f"secret:{i}"} for i in range(5)]
    ciphertexts = ask(dispatcher, req("encrypt", items=items))["items"]
    assert [aead.decrypt(c, f"secret:{i}") for i, c in enumerate(ciphertexts)] == [
        f"v{i}".encode() for i in range(5)
    ]
    opened = ask(
        dispatcher,
        req(
            "decrypt",
            items=[{"ciphertext": c, "context": f"secret:{i}"} for i, c in enumerate(ciphertexts)],
        ),
    )
    assert opened["items"] == [f"v{i}".encode() for i in range(5)]


def test_decrypt_under_another_context_is_decrypt_failed(
    dispatcher: Dispatcher, aead: Aead
) -> None:
    """A context swap over the wire is decrypt_failed, naming the item but no value."""
    ciphertext = aead.encrypt(b"value", "secret:a")
    reply = ask(
        dispatcher, req("decrypt", items=[{"ciphertext": ciphertext, "context": "secret:b"}])
    )
    assert reply["error"] == "decrypt_failed"
    assert "item 0" in reply["message"]
    assert "value" not in reply["message"].replace("does not open", "")


def test_job_load_then_job_secrets_then_job_drop(dispatcher: Dispatcher, aead: Aead) -> None:
    """A loaded job's secrets are served for its token until job_drop."""
    load_job(dispatcher, aead, A=b"alpha", B=b"beta")
    got = ask(dispatcher, req("job_secrets", job_id="job-1", token=TOKEN), role="worker")
    assert got["secrets"] == {"A": b"alpha", "B": b"beta"}
    assert ask(dispatcher, req("job_drop", job_id="job-1"))["dropped"] is True
    assert ask(dispatcher, req("job_drop", job_id="job-1"))["dropped"] is False
    gone = ask(dispatcher, req("job_secrets", job_id="job-1", token=TOKEN), role="worker")
    assert gone["error"] == "not_found"


def test_job_secrets_with_a_wrong_token_is_unauthorized(dispatcher: Dispatcher, aead: Aead) -> None:
    """A token whose hash does not match is unauthorized, and no secret is in the reply."""
    load_job(dispatcher, aead, A=b"alpha")
    reply = ask(dispatcher, req("job_secrets", job_id="job-1", token="guess"), role="worker")
    assert reply["error"] == "unauthorized"
    assert "secrets" not in reply


def test_job_load_with_one_bad_ciphertext_loads_nothing(dispatcher: Dispatcher, aead: Aead) -> None:
    """job_load is all or nothing: one undecryptable secret leaves the cache unchanged."""
    load_job(dispatcher, aead, A=b"kept")
    good = aead.encrypt(b"x", "secret:X")
    reply = ask(
        dispatcher,
        req(
            "job_load",
            job_id="job-1",
            token_sha256=bytes(32),
            ttl_s=60,
            secrets=[
                {"name": "X", "ciphertext": good, "context": "secret:X"},
                {"name": "Y", "ciphertext": good, "context": "secret:Y"},
            ],
        ),
    )
    assert reply["error"] == "decrypt_failed"
    still = ask(dispatcher, req("job_secrets", job_id="job-1", token=TOKEN), role="worker")
    assert still["secrets"] == {"A": b"kept"}


def test_stats_counts_requests_errors_jobs_and_encryptions(
    dispatcher: Dispatcher, aead: Aead
) -> None:
    """stats reports jobs cached, encryptions per key id (hex), requests and errors."""
    ask(dispatcher, req("encrypt", items=[{"plaintext": b"a", "context": "c"}] * 3))
    load_job(dispatcher, aead, A=b"a")
    ask(dispatcher, req("job_secrets", job_id="nope", token="t"), role="worker")
    stats = ask(dispatcher, req("stats"))
    assert stats["jobs_cached"] == 1
    assert stats["secrets_cached"] == 1
    assert stats["encryptions"] == {aead.key_id.hex(): aead.encryptions}
    assert stats["requests"]["encrypt"] == 1
    assert stats["requests"]["job_load"] == 1
    assert stats["errors"] == {"not_found": 1}
    assert stats["boot_id"] == "boot-1"


@pytest.mark.parametrize("op", ["encrypt", "decrypt", "job_load", "job_drop", "stats"])
def test_control_ops_on_the_worker_socket_are_forbidden(dispatcher: Dispatcher, op: str) -> None:
    """A worker can never encrypt, decrypt or manage jobs: forbidden, with the id echoed."""
    reply = ask(dispatcher, req(op, 99), role="worker")
    assert (reply["id"], reply["ok"], reply["error"]) == (99, False, "forbidden")


def test_job_secrets_on_the_control_socket_is_forbidden(dispatcher: Dispatcher) -> None:
    """job_secrets belongs to the worker socket."""
    reply = ask(dispatcher, req("job_secrets", job_id="j", token="t"))
    assert reply["error"] == "forbidden"


@pytest.mark.parametrize(
    ("payload", "reply_id"),
    [
        (b"", 0),
        (b"\xc1", 0),  # a byte msgpack never uses
        (b"\x92\x01\x02", 0),  # an array
        (msgspec.msgpack.encode("ping"), 0),  # a string
        (msgspec.msgpack.encode({"v": 1, "op": "ping"}), 0),  # no id
        (msgspec.msgpack.encode({"v": 1, "id": "7", "op": "ping"}), 0),  # id of the wrong type
        (msgspec.msgpack.encode({"v": 2, "id": 7, "op": "ping"}), 7),  # wrong version
        (msgspec.msgpack.encode({"id": 7, "op": "ping"}), 7),  # no version
        (msgspec.msgpack.encode({"v": 1, "id": 7}), 7),  # no op
        (msgspec.msgpack.encode({"v": 1, "id": 7, "op": "launch"}), 7),  # unknown op
        (msgspec.msgpack.encode({"v": 1, "id": 7, "op": 3}), 7),  # op of the wrong type
        (msgspec.msgpack.encode(req("encrypt", items=[{"plaintext": "s", "context": "c"}])), 7),
        (msgspec.msgpack.encode(req("encrypt", items={"plaintext": b"s"})), 7),
        (msgspec.msgpack.encode(req("job_drop", job_id=5)), 7),
        (
            msgspec.msgpack.encode(
                req("job_load", job_id="j", token_sha256=b"short", ttl_s=5, secrets=[])
            ),
            7,
        ),
        (
            msgspec.msgpack.encode(
                req("job_load", job_id="j", token_sha256=bytes(32), ttl_s=0, secrets=[])
            ),
            7,
        ),
        (
            msgspec.msgpack.encode(
                req("job_load", job_id="", token_sha256=bytes(32), ttl_s=5, secrets=[])
            ),
            7,
        ),
        (msgspec.msgpack.encode(req("encrypt", items=[{"plaintext": b"s", "context": ""}])), 7),
        (msgspec.msgpack.encode({"v": True, "id": 7, "op": "ping"}), 7),
        (msgspec.msgpack.encode(req("ping")) + b"\x00", 0),  # trailing bytes
    ],
)
def test_malformed_requests_get_bad_request(
    dispatcher: Dispatcher, payload: bytes, reply_id: int
) -> None:
    """Each malformed request is answered bad_request, with its id when it can be read."""
    reply = msgspec.msgpack.decode(bytes(dispatcher.handle("control", payload)))
    assert (reply["v"], reply["id"], reply["ok"], reply["error"]) == (
        1,
        reply_id,
        False,
        "bad_request",
    )
    assert "Traceback" not in reply["message"]


@pytest.mark.parametrize("nesting", [b"\x91", b"\x81\xa1v"])
def test_deeply_nested_input_is_a_bad_request_not_a_crash(
    dispatcher: Dispatcher, nesting: bytes
) -> None:
    """100,000 levels of nested arrays or maps are bad_request, not a RecursionError."""
    reply = msgspec.msgpack.decode(bytes(dispatcher.handle("control", nesting * 100_000 + b"\x00")))
    assert reply["error"] == "bad_request"


def test_duplicate_secret_names_are_a_bad_request(dispatcher: Dispatcher, aead: Aead) -> None:
    """job_load with the same name twice is bad_request."""
    ciphertext = aead.encrypt(b"x", "c")
    secret = {"name": "A", "ciphertext": ciphertext, "context": "c"}
    reply = ask(
        dispatcher,
        req("job_load", job_id="j", token_sha256=bytes(32), ttl_s=5, secrets=[secret, secret]),
    )
    assert reply["error"] == "bad_request"


@pytest.mark.parametrize(
    "message",
    [
        req("encrypt", items=[{"plaintext": b"x", "context": "c"}] * (MAX_ITEMS + 1)),
        req("encrypt", items=[{"plaintext": bytes(MAX_PLAINTEXT_BYTES + 1), "context": "c"}]),
        req("encrypt", items=[{"plaintext": b"x", "context": "c" * (MAX_CONTEXT_BYTES + 1)}]),
        req("decrypt", items=[{"ciphertext": b"x", "context": "c"}] * (MAX_ITEMS + 1)),
        req("job_drop", job_id="j" * 129),
    ],
)
def test_over_the_caps_is_too_large(dispatcher: Dispatcher, message: dict[str, Any]) -> None:
    """Requests over a size cap are too_large and nothing is encrypted."""
    assert ask(dispatcher, message)["error"] == "too_large"


def test_a_full_job_cache_is_too_large(dispatcher: Dispatcher, aead: Aead) -> None:
    """Loading a new job into a full cache is too_large."""
    load_job(dispatcher, aead, "a")
    load_job(dispatcher, aead, "b")
    reply = ask(
        dispatcher, req("job_load", job_id="c", token_sha256=bytes(32), ttl_s=5, secrets=[])
    )
    assert reply["error"] == "too_large"


def test_a_bug_in_an_op_is_internal_and_keyd_keeps_serving(
    dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception inside an op becomes `internal` (no exception text) and the next
    request is served."""

    def broken(_: object) -> bytes:
        raise RuntimeError("secret-looking detail")

    handlers = dispatcher._handlers
    ping_type = next(t for t, (name, _) in handlers.items() if name == "ping")
    monkeypatch.setitem(handlers, ping_type, ("ping", broken))
    reply = ask(dispatcher, req("ping", 5))
    assert (reply["id"], reply["error"]) == (5, "internal")
    assert "secret-looking" not in reply["message"]
    assert ask(dispatcher, req("stats"))["errors"] == {"internal": 1}


def test_every_error_code_is_reachable_in_process(dispatcher: Dispatcher, aead: Aead) -> None:
    """The error codes this suite provokes are exactly the protocol's list."""
    seen = set()
    seen.add(ask(dispatcher, {"v": 1})["error"])
    seen.add(ask(dispatcher, req("stats"), role="worker")["error"])
    load_job(dispatcher, aead, A=b"a")
    seen.add(ask(dispatcher, req("job_secrets", job_id="job-1", token="x"), role="worker")["error"])
    seen.add(ask(dispatcher, req("job_secrets", job_id="job-2", token="x"), role="worker")["error"])
    seen.add(
        ask(dispatcher, req("decrypt", items=[{"ciphertext": b"zz", "context": "c"}]))["error"]
    )
    seen.add(ask(dispatcher, req("job_drop", job_id="j" * 500))["error"])
    dispatcher._handlers = {}  # every op now fails inside keyd
    seen.add(ask(dispatcher, req("ping"))["error"])
    assert seen == set(ERROR_CODES)


# Property: whatever arrives, the dispatcher answers a well-formed error or success reply.

_fields = st.dictionaries(
    st.sampled_from(
        ["v", "id", "op", "items", "job_id", "token", "token_sha256", "ttl_s", "secrets", "x"]
    ),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=True)
        | st.text(max_size=20)
        | st.binary(max_size=40)
        | st.sampled_from(sorted(ALL_OPS)),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["plaintext", "ciphertext", "context", "name"]),
                children,
                max_size=4,
            )
        ),
        max_leaves=12,
    ),
    max_size=8,
)
_payloads = st.one_of(
    st.binary(max_size=200),
    _fields.map(msgspec.msgpack.encode),
    _fields.map(lambda fields: msgspec.msgpack.encode({"v": 1, "id": 3, **fields})),
    # A valid request with one byte changed or cut short: framing-level corruption.
    st.tuples(
        st.sampled_from(
            [
                msgspec.msgpack.encode(req("ping")),
                msgspec.msgpack.encode(req("encrypt", items=[{"plaintext": b"p", "context": "c"}])),
                msgspec.msgpack.encode(req("job_secrets", job_id="j", token="t")),
            ]
        ),
        st.integers(min_value=0, max_value=60),
        st.integers(min_value=0, max_value=255),
        st.booleans(),
    ).map(lambda t: t[0][: t[1]] if t[3] else t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]),
)
_shared_dispatcher = Dispatcher(Aead(bytes(32)), SecretCache(60, max_jobs=4), boot_id="p")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(role=st.sampled_from(["control", "worker"]), payload=_payloads)
def test_no_input_raises_past_the_dispatcher(role: Role, payload: bytes) -> None:
    """Any frame yields a v1 reply with ok true or a known error code; nothing raises."""
    reply = msgspec.msgpack.decode(bytes(_shared_dispatcher.handle(role, payload)))
    assert reply["v"] == 1
    assert isinstance(reply["id"], int)
    if reply["ok"] is False:
        assert reply["error"] in ERROR_CODES
        assert reply["error"] != "internal", reply
        assert "Traceback" not in reply["message"]
    else:
        assert reply["ok"] is True


_frames = st.one_of(
    st.lists(st.binary(max_size=40), max_size=5),
    st.tuples(st.binary(min_size=1, max_size=8), _payloads).map(lambda t: [t[0], b"", t[1]]),
)


@settings(max_examples=300, deadline=None)
@given(role=st.sampled_from(["control", "worker"]), frames=_frames)
def test_every_message_is_answered_or_dropped(role: Role, frames: list[bytes]) -> None:
    """Any multipart message is either dropped (None) or answered [routing id, b"", a v1
    reply] to the same routing id; nothing raises."""
    reply = _shared_dispatcher.answer(role, frames)
    if reply is None:
        assert len(frames) != 3 or frames[1] != b""
        return
    assert reply[:2] == [frames[0], b""]
    assert msgspec.msgpack.decode(bytes(reply[2]))["v"] == 1
