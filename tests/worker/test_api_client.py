"""The worker's HTTP client against a real server on a loopback socket that answers the
way an HTTP/1.1 server may: by Content-Length, chunked, up to the connection's end, and
closing an idle keep-alive connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from danube_worker.api_client import ApiClient, ApiRefused, ApiUnavailable

HANG_GUARD_S = 10.0
TOKEN = "dnb_w_" + "x" * 43
Answer = Callable[[str], bytes]


def by_length(status: int, body: dict[str, object], *, close: bool = False) -> bytes:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(data)}\r\n" + ("Connection: close\r\n" if close else "")
    return head.encode() + b"\r\n" + data


@dataclass
class Server:
    """Answers each request with `answer(request line)`; counts connections."""

    answer: Answer
    connections: int = 0
    requests: list[bytes] = field(default_factory=list[bytes])
    close_after_answer: bool = False
    port: int = 0
    received: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                self.received.set()
                line = head.split(b"\r\n", 1)[0].decode()
                if line.startswith("POST /api/v1/worker/claim"):
                    await asyncio.sleep(3600)  # a long poll that never answers
                writer.write(self.answer(line))
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    found = Server(answer=lambda _: by_length(200, {"cancel_requested": False}))
    listening = await asyncio.start_server(found.serve, "127.0.0.1", 0)
    found.port = listening.sockets[0].getsockname()[1]
    try:
        yield found
    finally:
        listening.close()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[ApiClient]:
    api = ApiClient(f"http://127.0.0.1:{server.port}", TOKEN)
    try:
        yield api
    finally:
        api.close()


async def test_requests_share_one_keep_alive_connection_with_the_bearer_token(
    server: Server, client: ApiClient
) -> None:
    """Three requests travel on one connection, each with the worker's token."""
    async with asyncio.timeout(HANG_GUARD_S):
        for _ in range(3):
            assert await client.heartbeat("job-1") is False
    assert server.connections == 1
    assert all(f"Authorization: Bearer {TOKEN}".encode() in r for r in server.requests)


async def test_a_chunked_answer_is_read_whole(server: Server, client: ApiClient) -> None:
    """A body sent in chunks arrives joined, and the connection is used again."""
    body = json.dumps({"length": 12, "cancel_requested": True}).encode()
    chunks = b"".join(
        f"{n:x}\r\n".encode() + body[i : i + n] + b"\r\n" for i, n in ((0, 5), (5, len(body) - 5))
    )
    server.answer = lambda _: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    async with asyncio.timeout(HANG_GUARD_S):
        appended = await client.append_log("job-1", 0, 0, b"hello world!")
        appended_again = await client.append_log("job-1", 0, 12, b"more")
    assert (appended.length, appended.cancel_requested) == (12, True)
    assert appended_again.length == 12
    assert server.connections == 1


async def test_an_answer_ended_by_closing_the_connection_is_read_and_a_new_one_follows(
    server: Server, client: ApiClient
) -> None:
    """No Content-Length: the body is what comes before the server closes; the next
    request opens a new connection."""
    server.close_after_answer = True
    server.answer = lambda _: b'HTTP/1.1 200 OK\r\n\r\n{"cancel_requested": true}'
    async with asyncio.timeout(HANG_GUARD_S):
        assert await client.heartbeat("job-1") is True
        assert await client.heartbeat("job-1") is True
    assert server.connections == 2


async def test_a_keep_alive_connection_the_server_closed_while_idle_is_replaced(
    server: Server, client: ApiClient
) -> None:
    """The server closes the connection after answering (as an idle keep-alive timeout
    does): the next request goes out on a new connection instead of failing."""
    server.close_after_answer = True
    async with asyncio.timeout(HANG_GUARD_S):
        assert await client.heartbeat("job-1") is False
        await asyncio.sleep(0.1)  # the close reaches the client while it is idle
        assert await client.heartbeat("job-1") is False
    assert server.connections == 2


async def test_503_is_unavailable_and_409_is_a_refusal_with_the_problem(
    server: Server, client: ApiClient
) -> None:
    """502/503/504 ask for a retry (ApiUnavailable); another error status is ApiRefused
    carrying the status and the problem body."""
    statuses = iter([503, 409])

    def answer(_: str) -> bytes:
        return by_length(next(statuses), {"detail": "stored length is 7", "length": 7})

    server.answer = answer
    async with asyncio.timeout(HANG_GUARD_S):
        with pytest.raises(ApiUnavailable, match="503"):
            await client.append_log("job-1", 0, 0, b"x")
        with pytest.raises(ApiRefused) as refused:
            await client.append_log("job-1", 0, 0, b"x")
    assert refused.value.status == 409
    assert refused.value.body["length"] == 7


async def test_a_malformed_answer_is_unavailable_never_a_crash(
    server: Server, client: ApiClient
) -> None:
    """An answer that is not HTTP/1.x raises ApiUnavailable, and the message does not
    hold the token."""
    server.answer = lambda _: b"SPAM 200\r\n\r\n"
    async with asyncio.timeout(HANG_GUARD_S):
        with pytest.raises(ApiUnavailable) as unavailable:
            await client.heartbeat("job-1")
    assert TOKEN not in str(unavailable.value)


async def test_abort_breaks_off_a_long_poll_with_unavailable(
    server: Server, client: ApiClient
) -> None:
    """abort() during a claim's long poll: the claim raises ApiUnavailable at once."""
    async with asyncio.timeout(HANG_GUARD_S):
        claiming = asyncio.create_task(client.claim(60))
        await server.received.wait()
        client.abort()
        with pytest.raises(ApiUnavailable):
            await claiming


async def test_an_unreachable_api_is_unavailable() -> None:
    """Nothing listening: ApiUnavailable naming the API's address."""
    closed = ApiClient("http://127.0.0.1:9", TOKEN)
    with pytest.raises(ApiUnavailable, match=r"127\.0\.0\.1:9"):
        await closed.heartbeat("job-1")
    closed.close()


async def test_a_refused_step_update_or_finish_still_names_the_api_s_detail(
    server: Server, client: ApiClient
) -> None:
    """The answers of a step update and a finish go unread on success, never on a
    refusal: the problem's detail reaches the error, and the connection goes on."""
    server.answer = lambda line: (
        by_length(409, {"detail": f"refused: {line.split()[0]}"})
        if "/refused/" in line
        else by_length(200, {"id": "job-1", "status": "succeeded"})
    )
    async with asyncio.timeout(HANG_GUARD_S):
        await client.update_step("job-1", 0, "running")
        await client.finish("job-1", "succeeded")
        with pytest.raises(ApiRefused) as patch_refused:
            await client.update_step("refused", 0, "succeeded", 0)
        with pytest.raises(ApiRefused) as finish_refused:
            await client.finish("refused", "failed", "no")
    assert (patch_refused.value.status, finish_refused.value.status) == (409, 409)
    assert patch_refused.value.message.endswith("409 refused: PATCH")
    assert finish_refused.value.message.endswith("409 refused: POST")
    assert server.connections == 1
