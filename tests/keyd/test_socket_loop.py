"""keyd's socket loop over its real sockets: bursts longer than a drain's batch, on both
sockets at once, are each answered in full and in order, and keyd answers a lone request
after them (a drain stops at a batch with messages still waiting, and reads a burst
until a receive fails: none of them may be lost or reordered)."""

from __future__ import annotations

import msgspec
import zmq

from danube_keyd.socket_server import BATCH
from tests.support.keyd import KeydProcess, RawPeer

# Longer than a batch, so that one drain stops with messages still waiting.
BURST = 2 * BATCH + 17
# A generous hang guard per reply, not a timing assertion.
REPLY_TIMEOUT_MS = 10_000


def _send_burst(peer: RawPeer, first_id: int) -> None:
    for request_id in range(first_id, first_id + BURST):
        peer.send_frames([b"", msgspec.msgpack.encode({"v": 1, "id": request_id, "op": "ping"})])


def _reply_ids(peer: RawPeer) -> list[int]:
    ids: list[int] = []
    for _ in range(BURST):
        reply = peer.receive(REPLY_TIMEOUT_MS)
        assert reply is not None, f"no reply after {len(ids)} of {BURST}"
        assert reply["ok"] is True
        ids.append(reply["id"])
    return ids


def test_bursts_on_both_sockets_are_answered_in_full_and_in_order(keyd: KeydProcess) -> None:
    """Two control peers and a worker peer each send more pings than a batch before
    reading; every peer gets every reply, in the order it asked."""
    with (
        RawPeer(keyd.home.control_path) as first,
        RawPeer(keyd.home.control_path) as second,
        RawPeer(keyd.home.worker_path) as worker,
    ):
        # A worker keeps a few requests queued per peer: libzmq holds the rest of its
        # burst in the peer's own buffers until keyd reads, so it is sent as well.
        worker.socket.setsockopt(zmq.SNDHWM, 0)
        peers = {1_000: first, 10_000: second, 100_000: worker}
        for first_id, peer in peers.items():
            _send_burst(peer, first_id)
        for first_id, peer in peers.items():
            assert _reply_ids(peer) == list(range(first_id, first_id + BURST))
        for peer in peers.values():
            lone = peer.ask({"v": 1, "id": 7, "op": "ping"}, REPLY_TIMEOUT_MS)
            assert lone is not None
            assert lone["id"] == 7
