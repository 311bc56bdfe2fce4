"""keyd's dispatcher in process: every op, every error code, the keyring, the encryption
limit, the audit line of every audited op, and (hypothesis) that no input raises past
it."""

# ruff: noqa: S105, S106 -- job tokens here are test data, not credentials

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from danube_keyd.aead import Aead
from danube_keyd.audit import AuditLog
from danube_keyd.dispatcher import AuditTrail, Dispatcher, Peer
from danube_keyd.encryption_counter import EncryptionCounter
from danube_keyd.keyring import Keyring
from danube_keyd.secret_cache import SecretCache
from danube_shared.errors import KeyFileError
from danube_shared.keyd_protocol import (
    ALL_OPS,
    ERROR_CODES,
    MAX_CIPHERTEXT_BYTES,
    MAX_CONTEXT_BYTES,
    MAX_ITEMS,
    MAX_PLAINTEXT_BYTES,
    Role,
)

TOKEN = "tok-1"


PEER = Peer(uid=1234, pid=5678)


@pytest.fixture
def aead() -> Aead:
    return Aead(os.urandom(32))


@pytest.fixture
def old_aead() -> Aead:
    """A key that is loaded but not active: what a rotation leaves behind."""
    return Aead(os.urandom(32))


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog.open(tmp_path / "audit" / "keyd-audit.log", os.urandom(32))
    yield log
    log.close()


def keyring_of(active: Aead, *others: Aead) -> Keyring:
    return Keyring(active=active, keys={key.key_id: key for key in (active, *others)})


def build(
    tmp_path: Path,
    audit: AuditTrail,
    keyring: Keyring,
    *,
    limit: int = 2**32,
    max_jobs: int = 2,
    max_bytes: int | None = None,
    load_keyring: Any = None,
) -> Dispatcher:
    return Dispatcher(
        keyring,
        SecretCache(3600, max_jobs=max_jobs, max_bytes=max_bytes),
        boot_id="boot-1",
        # The limit is a constructor argument, for tests only: keyd's main() never sets it.
        counter=EncryptionCounter(tmp_path / "encryption.key", limit=limit, block=4),
        audit=audit,
        load_keyring=load_keyring,
    )


@pytest.fixture
def dispatcher(tmp_path: Path, audit: AuditLog, aead: Aead, old_aead: Aead) -> Dispatcher:
    return build(tmp_path, audit, keyring_of(aead, old_aead))


def audit_lines(audit: AuditLog) -> list[dict[str, Any]]:
    return [json.loads(line) for line in audit.path.read_text().splitlines()]


def ask(dispatcher: Dispatcher, message: Any, role: Role = "control") -> dict[str, Any]:
    reply = dispatcher.handle(role, msgspec.msgpack.encode(message), PEER)
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


def test_encrypt_answers_item_for_item_under_the_active_key(
    dispatcher: Dispatcher, aead: Aead
) -> None:
    """encrypt answers item for item, in order, each under the active key."""
    items = [{"plaintext": f"v{i}".encode(), "context": f"secret:{i}"} for i in range(5)]
    ciphertexts = ask(dispatcher, req("encrypt", items=items))["items"]
    assert [aead.decrypt(c, f"secret:{i}") for i, c in enumerate(ciphertexts)] == [
        f"v{i}".encode() for i in range(5)
    ]


def test_decrypt_is_an_unknown_op(dispatcher: Dispatcher, aead: Aead) -> None:
    """There is no decrypt: asking for it is bad_request (unknown op), on either socket,
    and no plaintext is in the reply."""
    ciphertext = aead.encrypt(b"PLAINTEXT", "secret:a")
    for role in ("control", "worker"):
        reply = ask(
            dispatcher,
            req("decrypt", items=[{"ciphertext": ciphertext, "context": "secret:a"}]),
            role=role,
        )
        assert (reply["ok"], reply["error"]) == (False, "bad_request")
        assert reply["message"] == "unknown op 'decrypt'"
        assert "items" not in reply


def test_rewrap_seals_old_key_ciphertexts_under_the_active_key(
    dispatcher: Dispatcher, aead: Aead, old_aead: Aead
) -> None:
    """rewrap answers item for item ciphertexts under the active key, bound to the same
    context, whichever loaded key sealed the input; no plaintext is in the reply."""
    old = [old_aead.encrypt(f"PLAIN-{i}".encode(), f"secret:{i}") for i in range(3)]
    current = aead.encrypt(b"PLAIN-3", "secret:3")
    items = [{"ciphertext": c, "context": f"secret:{i}"} for i, c in enumerate([*old, current])]
    reply = ask(dispatcher, req("rewrap", items=items))
    assert reply["ok"], reply
    assert all(c[1:5] == aead.key_id for c in reply["items"])
    assert [aead.decrypt(c, f"secret:{i}") for i, c in enumerate(reply["items"])] == [
        f"PLAIN-{i}".encode() for i in range(4)
    ]
    assert b"PLAIN" not in msgspec.msgpack.encode(reply)


def test_rewrap_under_another_context_is_decrypt_failed(
    dispatcher: Dispatcher, old_aead: Aead
) -> None:
    """A context swap in rewrap is decrypt_failed, naming the item but no value."""
    ciphertext = old_aead.encrypt(b"value", "secret:a")
    reply = ask(
        dispatcher, req("rewrap", items=[{"ciphertext": ciphertext, "context": "secret:b"}])
    )
    assert reply["error"] == "decrypt_failed"
    assert "item 0" in reply["message"]
    assert "value" not in reply["message"].replace("does not open", "")


def test_a_ciphertext_under_an_unloaded_key_is_decrypt_failed(dispatcher: Dispatcher) -> None:
    """A key id no loaded key has (a retired key) is decrypt_failed, in rewrap and
    job_load alike."""
    stranger = Aead(os.urandom(32)).encrypt(b"v", "secret:a")
    item = {"ciphertext": stranger, "context": "secret:a"}
    assert ask(dispatcher, req("rewrap", items=[item]))["error"] == "decrypt_failed"
    loaded = ask(
        dispatcher,
        req(
            "job_load", job_id="j", token_sha256=bytes(32), ttl_s=5, secrets=[{"name": "A", **item}]
        ),
    )
    assert loaded["error"] == "decrypt_failed"


def test_job_load_opens_secrets_under_any_loaded_key(
    dispatcher: Dispatcher, aead: Aead, old_aead: Aead
) -> None:
    """A job whose secrets are under the old key and the new one loads and is served:
    running jobs are untouched by a rotation."""
    secrets = [
        {"name": "OLD", "ciphertext": old_aead.encrypt(b"o", "secret:o"), "context": "secret:o"},
        {"name": "NEW", "ciphertext": aead.encrypt(b"n", "secret:n"), "context": "secret:n"},
    ]
    loaded = ask(
        dispatcher,
        req(
            "job_load",
            job_id="job-1",
            token_sha256=hashlib.sha256(TOKEN.encode()).digest(),
            ttl_s=60,
            secrets=secrets,
        ),
    )
    assert loaded["loaded"] == 2
    got = ask(dispatcher, req("job_secrets", job_id="job-1", token=TOKEN), role="worker")
    assert got["secrets"] == {"OLD": b"o", "NEW": b"n"}


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
    assert stats["encryptions"] == {aead.key_id.hex(): 3}
    assert stats["encryption_limit"] == 2**32
    assert stats["requests"]["encrypt"] == 1
    assert stats["requests"]["job_load"] == 1
    assert stats["errors"] == {"not_found": 1}
    assert stats["boot_id"] == "boot-1"


@pytest.mark.parametrize(
    "op", ["encrypt", "rewrap", "job_load", "job_drop", "stats", "keys_reload", "audit_verify"]
)
def test_control_ops_on_the_worker_socket_are_forbidden(dispatcher: Dispatcher, op: str) -> None:
    """A worker can never encrypt, rewrap, reload or manage jobs: forbidden, with the id
    echoed."""
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
        req("rewrap", items=[{"ciphertext": b"x", "context": "c"}] * (MAX_ITEMS + 1)),
        req("rewrap", items=[{"ciphertext": bytes(MAX_CIPHERTEXT_BYTES + 1), "context": "c"}]),
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

    def broken(_: object, _peer: object) -> bytes:
        raise RuntimeError("secret-looking detail")

    handlers = dispatcher._handlers
    ping_type = next(t for t, (name, _) in handlers.items() if name == "ping")
    monkeypatch.setitem(handlers, ping_type, ("ping", broken))
    reply = ask(dispatcher, req("ping", 5))
    assert (reply["id"], reply["error"]) == (5, "internal")
    assert "secret-looking" not in reply["message"]
    assert ask(dispatcher, req("stats"))["errors"] == {"internal": 1}


def test_every_error_code_is_reachable_in_process(
    dispatcher: Dispatcher, aead: Aead, tmp_path: Path, audit: AuditLog
) -> None:
    """The error codes this suite provokes are exactly the protocol's list."""
    seen = set()
    seen.add(ask(dispatcher, {"v": 1})["error"])
    seen.add(ask(dispatcher, req("stats"), role="worker")["error"])
    load_job(dispatcher, aead, A=b"a")
    seen.add(ask(dispatcher, req("job_secrets", job_id="job-1", token="x"), role="worker")["error"])
    seen.add(ask(dispatcher, req("job_secrets", job_id="job-2", token="x"), role="worker")["error"])
    seen.add(ask(dispatcher, req("rewrap", items=[{"ciphertext": b"zz", "context": "c"}]))["error"])
    (tmp_path / "x").mkdir()
    exhausted = build(tmp_path / "x", audit, keyring_of(aead), limit=1)
    seen.add(
        ask(exhausted, req("encrypt", items=[{"plaintext": b"p", "context": "c"}] * 2))["error"]
    )
    seen.add(ask(dispatcher, req("job_drop", job_id="j" * 500))["error"])
    dispatcher._handlers = {}  # every op now fails inside keyd
    seen.add(ask(dispatcher, req("ping"))["error"])
    assert seen == set(ERROR_CODES)


_HYPOTHESIS_KEY = Aead(bytes(32))
_HYPOTHESIS_OLD_KEY = Aead(bytes(range(32)))

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
                msgspec.msgpack.encode(
                    req(
                        "rewrap",
                        items=[
                            {
                                "ciphertext": _HYPOTHESIS_OLD_KEY.encrypt(b"p", "secret:1"),
                                "context": "secret:1",
                            }
                        ],
                    )
                ),
                msgspec.msgpack.encode(req("keys_reload")),
                msgspec.msgpack.encode(req("audit_verify")),
            ]
        ),
        st.integers(min_value=0, max_value=60),
        st.integers(min_value=0, max_value=255),
        st.booleans(),
    ).map(lambda t: t[0][: t[1]] if t[3] else t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]),
)


@pytest.fixture(scope="module")
def shared_dispatcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dispatcher]:
    """One dispatcher for every example (hypothesis runs examples in one test call):
    an active and an old key, a real audit log and count file, and a reloadable keyring."""
    root = tmp_path_factory.mktemp("hyp")
    log = AuditLog.open(root / "keyd-audit.log", bytes(32))
    keyring = keyring_of(_HYPOTHESIS_KEY, _HYPOTHESIS_OLD_KEY)
    yield build(root, log, keyring, max_jobs=4, load_keyring=lambda: keyring)
    log.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(role=st.sampled_from(["control", "worker"]), payload=_payloads)
def test_no_input_raises_past_the_dispatcher(
    shared_dispatcher: Dispatcher, role: Role, payload: bytes
) -> None:
    """Any frame yields a v1 reply with ok true or a known error code; nothing raises."""
    reply = msgspec.msgpack.decode(bytes(shared_dispatcher.handle(role, payload, PEER)))
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
def test_every_message_is_answered_or_dropped(
    shared_dispatcher: Dispatcher, role: Role, frames: list[bytes]
) -> None:
    """Any multipart message is either dropped (None) or answered [routing id, b"", a v1
    reply] to the same routing id; nothing raises."""
    reply = shared_dispatcher.answer(role, frames)
    if reply is None:
        assert len(frames) != 3 or frames[1] != b""
        return
    assert reply[:2] == [frames[0], b""]
    assert msgspec.msgpack.decode(bytes(reply[2]))["v"] == 1


# The encryption limit.


def test_encrypt_past_the_limit_is_key_exhausted_and_counts_none(
    tmp_path: Path, audit: AuditLog, aead: Aead
) -> None:
    """With a limit of 5, 3 then 2 encryptions pass; one more is key_exhausted ("rotate
    the key") and the count stays at the limit."""
    dispatcher = build(tmp_path, audit, keyring_of(aead), limit=5)
    item = {"plaintext": b"p", "context": "c"}
    assert ask(dispatcher, req("encrypt", items=[item] * 3))["ok"]
    assert ask(dispatcher, req("encrypt", items=[item] * 2))["ok"]
    refused = ask(dispatcher, req("encrypt", items=[item]))
    assert refused["error"] == "key_exhausted"
    assert "rotate the key" in refused["message"]
    assert ask(dispatcher, req("stats"))["encryptions"] == {aead.key_id.hex(): 5}


def test_rewrap_past_the_limit_is_key_exhausted_but_jobs_keep_working(
    tmp_path: Path, audit: AuditLog, aead: Aead, old_aead: Aead
) -> None:
    """At the limit rewrap is key_exhausted, while job_load and job_secrets still work."""
    dispatcher = build(tmp_path, audit, keyring_of(aead, old_aead), limit=1)
    old = old_aead.encrypt(b"v", "secret:1")
    items = [{"ciphertext": old, "context": "secret:1"}] * 2
    assert ask(dispatcher, req("rewrap", items=items))["error"] == "key_exhausted"
    load_job(dispatcher, aead, A=b"alpha")
    got = ask(dispatcher, req("job_secrets", job_id="job-1", token=TOKEN), role="worker")
    assert got["secrets"] == {"A": b"alpha"}


def test_the_count_survives_a_new_dispatcher(tmp_path: Path, audit: AuditLog, aead: Aead) -> None:
    """The count is persisted in reserved blocks: a restarted keyd never counts back."""
    first = build(tmp_path, audit, keyring_of(aead))
    ask(first, req("encrypt", items=[{"plaintext": b"p", "context": "c"}] * 3))
    again = build(tmp_path, audit, keyring_of(aead))
    assert ask(again, req("stats"))["encryptions"][aead.key_id.hex()] >= 3


# keys_reload.


def test_keys_reload_swaps_the_keyring_and_keeps_the_cache(
    tmp_path: Path, audit: AuditLog, aead: Aead
) -> None:
    """keys_reload answers the new active id and every loaded id; encrypt then uses the
    new key, the old one still opens, and a cached job is still served."""
    new = Aead(os.urandom(32))
    rings = [keyring_of(new, aead)]
    dispatcher = build(tmp_path, audit, keyring_of(aead), load_keyring=rings.pop)
    load_job(dispatcher, aead, A=b"alpha")
    reply = ask(dispatcher, req("keys_reload"))
    assert (reply["key_id"], reply["key_ids"]) == (new.key_id, [new.key_id, aead.key_id])
    [sealed] = ask(dispatcher, req("encrypt", items=[{"plaintext": b"p", "context": "c"}]))["items"]
    assert sealed[1:5] == new.key_id
    got = ask(dispatcher, req("job_secrets", job_id="job-1", token=TOKEN), role="worker")
    assert got["secrets"] == {"A": b"alpha"}


def test_a_refused_reload_keeps_the_loaded_keyring(
    tmp_path: Path, audit: AuditLog, aead: Aead
) -> None:
    """A key file refused on reload: internal naming it, the old keyring still serves,
    and the refusal is audited."""

    def refuse() -> Keyring:
        raise KeyFileError("key file /k/encryption.key.0000 has mode 0644; fix: chmod 600")

    dispatcher = build(tmp_path, audit, keyring_of(aead), load_keyring=refuse)
    reply = ask(dispatcher, req("keys_reload"))
    assert reply["error"] == "internal"
    assert "chmod 600" in reply["message"]
    assert ask(dispatcher, req("ping"))["key_id"] == aead.key_id
    assert [(line["op"], line["result"]) for line in audit_lines(audit)] == [
        ("keys_reload", "key_file_refused")
    ]


# The audit.


def test_every_audited_op_writes_one_line_with_the_peer_and_no_value(
    dispatcher: Dispatcher, audit: AuditLog, aead: Aead, old_aead: Aead
) -> None:
    """job_load, job_secrets (allowed and refused), rewrap and keys_reload each write one
    line with the peer's uid and pid, the job and the names, never a value; encrypt,
    job_drop, ping and stats write none; the chain verifies."""
    load_job(dispatcher, aead, A=b"VALUE-alpha")
    ask(dispatcher, req("job_secrets", job_id="job-1", token=TOKEN), role="worker")
    ask(dispatcher, req("job_secrets", job_id="job-1", token="wrong"), role="worker")
    ask(dispatcher, req("job_secrets", job_id="nope", token=TOKEN), role="worker")
    old = old_aead.encrypt(b"VALUE-old", "secret:9")
    ask(dispatcher, req("rewrap", items=[{"ciphertext": old, "context": "secret:9"}]))
    ask(dispatcher, req("keys_reload"))  # refused: no loader
    ask(dispatcher, req("encrypt", items=[{"plaintext": b"VALUE-enc", "context": "c"}]))
    ask(dispatcher, req("job_drop", job_id="job-1"))
    ask(dispatcher, req("stats"))
    lines = audit_lines(audit)
    assert [(line["op"], line["job_id"], line["names"], line["result"]) for line in lines] == [
        ("job_load", "job-1", ["A"], "ok"),
        ("job_secrets", "job-1", ["A"], "ok"),
        ("job_secrets", "job-1", [], "unauthorized"),
        ("job_secrets", "nope", [], "not_found"),
        ("rewrap", None, ["secret:9"], "ok"),
        ("keys_reload", None, [], "error"),
    ]
    assert all((line["uid"], line["pid"]) == (1234, 5678) for line in lines)
    assert lines[0]["key_ids"] == [aead.key_id.hex()]
    assert lines[4]["key_ids"] == [old_aead.key_id.hex(), aead.key_id.hex()]
    assert b"VALUE" not in audit.path.read_bytes()
    verdict = ask(dispatcher, req("audit_verify"))
    assert (verdict["records"], verdict["intact"], verdict["first_bad_line"]) == (6, True, None)


def test_audit_verify_names_an_edited_line(
    dispatcher: Dispatcher, audit: AuditLog, aead: Aead
) -> None:
    """An edited line makes audit_verify answer not intact, naming that line."""
    for job in ("a", "b", "c"):
        load_job(dispatcher, aead, job, A=b"x")
        ask(dispatcher, req("job_drop", job_id=job))
    text = audit.path.read_text().splitlines()
    text[1] = text[1].replace('"job_id":"b"', '"job_id":"z"')
    audit.path.write_text("\n".join(text) + "\n")
    verdict = ask(dispatcher, req("audit_verify"))
    assert (verdict["intact"], verdict["first_bad_line"]) == (False, 2)


class _BrokenAudit:
    """An audit trail whose disk is gone: every append fails."""

    def append(self, op: str, **_: object) -> None:
        from danube_keyd.audit import AuditUnavailable

        raise AuditUnavailable(f"{op}: no space left on device")

    def write_head(self) -> None:
        from danube_keyd.audit import AuditUnavailable

        raise AuditUnavailable("no space left on device")

    def verify(self) -> Any:
        raise AssertionError("not called")


def test_an_unwritable_audit_refuses_and_discloses_nothing(
    tmp_path: Path, aead: Aead, old_aead: Aead
) -> None:
    """With the audit line unwritable: job_secrets is internal "audit log unavailable"
    with no secret; job_load leaves nothing cached; rewrap returns no ciphertext."""
    good = build(tmp_path, _BrokenAudit(), keyring_of(aead, old_aead))
    reply = ask(
        good,
        req(
            "job_load",
            job_id="job-1",
            token_sha256=hashlib.sha256(TOKEN.encode()).digest(),
            ttl_s=60,
            secrets=[{"name": "A", "ciphertext": aead.encrypt(b"SECRET", "s:a"), "context": "s:a"}],
        ),
    )
    assert (reply["error"], reply["message"]) == ("internal", "audit log unavailable")
    assert ask(good, req("stats"))["jobs_cached"] == 0
    old = old_aead.encrypt(b"SECRET", "secret:1")
    rewrap = ask(good, req("rewrap", items=[{"ciphertext": old, "context": "secret:1"}]))
    assert (rewrap["error"], "items" in rewrap) == ("internal", False)


def test_job_secrets_is_refused_when_its_line_cannot_be_written(
    tmp_path: Path, audit: AuditLog, aead: Aead
) -> None:
    """A job loaded while the audit worked, then the audit fails: job_secrets answers
    internal "audit log unavailable" and no secret."""
    dispatcher = build(tmp_path, audit, keyring_of(aead))
    load_job(dispatcher, aead, A=b"SECRET-a")
    dispatcher._audit = _BrokenAudit()  # the disk fills up
    reply = dispatcher.handle(
        "worker", msgspec.msgpack.encode(req("job_secrets", job_id="job-1", token=TOKEN))
    )
    assert b"SECRET" not in bytes(reply)
    decoded = msgspec.msgpack.decode(bytes(reply))
    assert (decoded["error"], decoded["message"]) == ("internal", "audit log unavailable")


# The cache's byte cap.


def test_a_job_load_past_cache_max_bytes_is_too_large_and_evicts_nothing(
    tmp_path: Path, audit: AuditLog, aead: Aead
) -> None:
    """With a 100-byte cap, a 60-byte job loads, a second 60-byte job is too_large, and
    the first is still served; replacing the first with 90 bytes fits."""
    dispatcher = build(tmp_path, audit, keyring_of(aead), max_bytes=100, max_jobs=10)
    load_job(dispatcher, aead, "first", A=b"a" * 60)
    secret = {"name": "B", "ciphertext": aead.encrypt(b"b" * 60, "s:b"), "context": "s:b"}
    reply = ask(
        dispatcher,
        req("job_load", job_id="second", token_sha256=bytes(32), ttl_s=5, secrets=[secret]),
    )
    assert reply["error"] == "too_large"
    got = ask(dispatcher, req("job_secrets", job_id="first", token=TOKEN), role="worker")
    assert got["secrets"] == {"A": b"a" * 60}
    load_job(dispatcher, aead, "first", A=b"c" * 90)
    assert ask(dispatcher, req("stats"))["cache_bytes"] == 90


# Property: over any sequence of the new ops, one audit line per audited request, the
# chain intact, and no value in it.

_ops = st.lists(
    st.sampled_from(
        [
            "job_load",
            "job_secrets",
            "job_secrets_wrong",
            "rewrap",
            "rewrap_bad",
            "keys_reload",
            "encrypt",
            "job_drop",
            "audit_verify",
            "stats",
        ]
    ),
    max_size=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops)
def test_audited_ops_write_exactly_one_line_each(
    tmp_path_factory: pytest.TempPathFactory, ops: list[str]
) -> None:
    """Whatever the order of the ops, each audited request (job_load, job_secrets, rewrap,
    keys_reload), allowed or refused, adds exactly one line; others add none; the chain
    stays intact and holds no plaintext."""
    root = tmp_path_factory.mktemp("seq")
    log = AuditLog.open(root / "a.log", os.urandom(32))
    keyring = keyring_of(_HYPOTHESIS_KEY, _HYPOTHESIS_OLD_KEY)
    dispatcher = build(root, log, keyring, max_jobs=4, load_keyring=lambda: keyring)
    token_hash = hashlib.sha256(TOKEN.encode()).digest()
    old = _HYPOTHESIS_OLD_KEY.encrypt(b"PLAINTEXT", "secret:1")
    requests: dict[str, tuple[Role, dict[str, Any]]] = {
        "job_load": (
            "control",
            req(
                "job_load",
                job_id="j",
                token_sha256=token_hash,
                ttl_s=9,
                secrets=[{"name": "N", "ciphertext": old, "context": "secret:1"}],
            ),
        ),
        "job_secrets": ("worker", req("job_secrets", job_id="j", token=TOKEN)),
        "job_secrets_wrong": ("worker", req("job_secrets", job_id="j", token="no")),
        "rewrap": ("control", req("rewrap", items=[{"ciphertext": old, "context": "secret:1"}])),
        "rewrap_bad": (
            "control",
            req("rewrap", items=[{"ciphertext": old, "context": "secret:2"}]),
        ),
        "keys_reload": ("control", req("keys_reload")),
        "encrypt": ("control", req("encrypt", items=[{"plaintext": b"PLAINTEXT", "context": "c"}])),
        "job_drop": ("control", req("job_drop", job_id="j")),
        "audit_verify": ("control", req("audit_verify")),
        "stats": ("control", req("stats")),
    }
    audited = {
        "job_load",
        "job_secrets",
        "job_secrets_wrong",
        "rewrap",
        "rewrap_bad",
        "keys_reload",
    }
    try:
        for op in ops:
            role, message = requests[op]
            reply = ask(dispatcher, message, role)
            assert reply.get("error") != "internal", reply
        lines = log.path.read_bytes().splitlines() if log.path.exists() else []
        assert len(lines) == sum(op in audited for op in ops)
        assert b"PLAINTEXT" not in b"".join(lines)
        assert log.verify().intact
    finally:
        log.close()


def test_a_malformed_or_misdirected_audited_request_is_still_recorded(
    dispatcher: Dispatcher, audit: AuditLog
) -> None:
    """job_secrets without a token, and job_secrets on the control socket, are refused
    and each still leaves its line, with the peer."""
    ask(dispatcher, req("job_secrets", job_id="j"), role="worker")
    ask(dispatcher, req("job_secrets", job_id="j", token="t"))
    lines = audit_lines(audit)
    assert [(line["op"], line["result"], line["pid"]) for line in lines] == [
        ("job_secrets", "bad_request", 5678),
        ("job_secrets", "forbidden", 5678),
    ]
