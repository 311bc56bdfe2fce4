"""CoalescingTransport over a real socket: a response head waits for its body and both
leave in one write; a head alone leaves at the end of the loop's turn; other writes,
and close, keep uvicorn's bytes and their order."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from danube_api.coalescing_transport import CoalescingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
BODY = b"{}"


@dataclass
class Wire:
    transport: CoalescingTransport
    peer: socket.socket

    def sent(self) -> bytes:
        """What has reached the peer so far (nothing: b"")."""
        try:
            return self.peer.recv(65536)
        except BlockingIOError:
            return b""

    async def received(self, size: int) -> bytes:
        """`size` bytes from the peer, however they were split."""
        data = b""
        async with asyncio.timeout(10):  # a hang guard, not a timing
            while len(data) < size:
                data += self.sent()
                await asyncio.sleep(0.001)
        return data


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    coalescing = CoalescingTransport(transport, loop)
    yield Wire(coalescing, peer)
    coalescing.abort()
    peer.close()


async def test_a_head_waits_for_its_body_and_both_go_in_one_write(wire: Wire) -> None:
    wire.transport.write(HEAD)
    assert wire.sent() == b""  # held, not sent
    wire.transport.write(BODY)
    # One write: the peer's first read holds both (a socketpair keeps a write whole).
    assert await wire.received(len(HEAD) + len(BODY)) == HEAD + BODY


async def test_a_head_with_no_body_after_it_leaves_at_the_end_of_the_turn(wire: Wire) -> None:
    wire.transport.write(HEAD)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert await wire.received(len(HEAD)) == HEAD
    wire.transport.write(BODY)  # a body streamed later goes as it comes
    assert await wire.received(len(BODY)) == BODY


async def test_other_writes_go_at_once(wire: Wire) -> None:
    wire.transport.write(b"0\r\n\r\n")  # a chunked body's end is not a head
    assert await wire.received(5) == b"0\r\n\r\n"


async def test_close_sends_the_head_it_holds_first(wire: Wire) -> None:
    wire.transport.write(HEAD)
    wire.transport.close()
    assert await wire.received(len(HEAD)) == HEAD
