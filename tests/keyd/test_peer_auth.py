"""The ZAP decision: kernel peer credentials against each socket's allowed uids."""

from __future__ import annotations

import pytest

from danube_keyd.peer_auth import PeerAuthorizer, peer_credentials

AUTHORIZER = PeerAuthorizer({"control": frozenset({0, 1000}), "worker": frozenset({0, 2000})})


def zap(domain: bytes, address: bytes, mechanism: bytes = b"NULL") -> list[bytes]:
    return [b"1.0", b"17", domain, address, b"", mechanism]


def test_libzmq_ipc_address_yields_uid_gid_pid() -> None:
    """libzmq's ipc ZAP address `host:uid:gid:pid` parses into the three numbers."""
    assert peer_credentials(b"localhost:1000:100:4242") == (1000, 100, 4242)
    assert peer_credentials(b":1000:100:") == (1000, 100, None)


@pytest.mark.parametrize("address", [b"", b"127.0.0.1", b"host:x:1:2", b"h:1:2:-3", b"1:2"])
def test_addresses_without_credentials_yield_none(address: bytes) -> None:
    """An address without `:uid:gid:pid` (tcp, or no SO_PEERCRED) has no credentials."""
    assert peer_credentials(address) is None


def test_an_allowed_uid_is_accepted_with_its_uid_as_user_id() -> None:
    """A uid in the domain's set gets 200, its uid as ZAP user id and its pid as the
    metadata property X-Peer-Pid."""
    request = zap(b"worker", b"localhost:2000:2000:99")
    decision = AUTHORIZER.decide(request)
    assert decision.allowed
    # The pid rides in the metadata frame as the property X-Peer-Pid (RFC 27, ZMTP form).
    metadata = b"\x0aX-Peer-Pid" + b"\x00\x00\x00\x02" + b"99"
    assert AUTHORIZER.reply(request, decision) == [
        b"1.0",
        b"17",
        b"200",
        b"OK",
        b"2000",
        metadata,
    ]


def test_a_uid_allowed_on_the_other_socket_is_refused() -> None:
    """A worker uid is refused on the control domain, with ZAP status 400."""
    request = zap(b"control", b"localhost:2000:2000:99")
    decision = AUTHORIZER.decide(request)
    assert not decision.allowed
    assert (decision.uid, decision.pid) == (2000, 99)
    assert AUTHORIZER.reply(request, decision)[2] == b"400"


@pytest.mark.parametrize(
    "request_frames",
    [
        zap(b"control", b"localhost:0:0:1", mechanism=b"PLAIN"),
        zap(b"other", b"localhost:0:0:1"),
        zap(b"control", b"10.0.0.1"),
        [b"1.0", b"1", b"control"],
        [b"2.0", b"1", b"control", b"localhost:0:0:1", b"", b"NULL"],
    ],
)
def test_anything_unexpected_is_refused(request_frames: list[bytes]) -> None:
    """Another mechanism or domain, no credentials or a malformed request: refused."""
    assert not AUTHORIZER.decide(request_frames).allowed
