"""keyd's socket loop over its real sockets: bursts longer than a drain's batch from two
control peers, with a worker peer's own queue full at the same time, are each answered
in full and in order, and keyd answers a lone request after them (a drain stops at a
batch with messages still waiting, and reads a burst until a receive fails: none of them
may be lost or reordered).

A worker peer's burst is `WORKER_QUEUE` requests, what DESIGN 5 lets it have queued:
past that, keyd may drop a reply to a peer that does not read its replies (counted and
logged), so a longer burst on the worker socket would test that rule's timing instead."""

from __future__ import annotations

import time

import msgspec

from danube_keyd.socket_server import BATCH, WORKER_QUEUE
from tests.support.keyd import KeydProcess, RawPeer

# Longer than a batch, so that one drain stops with messages still waiting.
BURST = 2 * BATCH + 17
# A generous hang guard per reply, not a timing assertion.
REPLY_TIMEOUT_MS = 10_000


def _send_burst(peer: RawPeer, first_id: int, count: int) -> None:
    for request_id in range(first_id, first_id + count):
        peer.send_frames([b"", msgspec.msgpack.encode({"v": 1, "id": request_id, "op": "ping"})])


def _reply_ids(peer: RawPeer, count: int) -> list[int]:
    ids: list[int] = []
    for _ in range(count):
        reply = peer.receive(REPLY_TIMEOUT_MS)
        assert reply is not None, f"no reply after {len(ids)} of {count}"
        assert reply["ok"] is True
        ids.append(reply["id"])
    return ids


def test_bursts_on_both_sockets_are_answered_in_full_and_in_order(keyd: KeydProcess) -> None:
    """Two control peers each send more pings than a batch, and a worker peer fills its
    queue, before any reads; every peer gets every reply, in the order it asked."""
    with (
        RawPeer(keyd.home.control_path) as first,
        RawPeer(keyd.home.control_path) as second,
        RawPeer(keyd.home.worker_path) as worker,
    ):
        peers = {1_000: (first, BURST), 10_000: (second, BURST), 100_000: (worker, WORKER_QUEUE)}
        for first_id, (peer, count) in peers.items():
            _send_burst(peer, first_id, count)
        for first_id, (peer, count) in peers.items():
            assert _reply_ids(peer, count) == list(range(first_id, first_id + count))
        for peer, _ in peers.values():
            lone = peer.ask({"v": 1, "id": 7, "op": "ping"}, REPLY_TIMEOUT_MS)
            assert lone is not None
            assert lone["id"] == 7


def test_lone_requests_after_idle_waits_are_each_answered(keyd: KeydProcess) -> None:
    """One request at a time on each socket, with the loop left to go idle between
    them: every wake-up receives at once (and a wake-up with nothing to receive, such as
    libzmq's own command after a reply, must not leave the next request unanswered)."""
    with (
        RawPeer(keyd.home.control_path) as control,
        RawPeer(keyd.home.worker_path) as worker,
    ):
        for request_id in range(40):
            peer = control if request_id % 2 else worker
            if request_id % 5 == 0:
                time.sleep(0.02)  # long enough for the loop to wait in poll(2) again
            reply = peer.ask({"v": 1, "id": request_id, "op": "ping"}, REPLY_TIMEOUT_MS)
            assert reply is not None, f"no reply to request {request_id}"
            assert reply["id"] == request_id
