"""A lean HTTP/1.1 keep-alive load generator for loopback.

Two cores are shared by the server and the load, so the client must cost as little as
possible: requests are pre-built bytes, responses are parsed just enough to find their
end (Content-Length), and each connection is one asyncio coroutine. Every run is bounded
in request count and in time, and stops by itself.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list[float])
    statuses: dict[int, int] = field(default_factory=dict[int, int])
    wall_s: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies_s)

    @property
    def rate(self) -> float:
        return self.count / self.wall_s if self.wall_s else 0.0

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 400)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return float("nan")
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_s) if self.latencies_s else float("nan")


def build_request(
    method: str, path: str, host: str, body: bytes = b"", token: str | None = None
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            break
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _connection(
    *,
    host: str,
    port: int,
    request: bytes,
    result: LoadResult,
    budget: list[int],
    deadline: float,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            start = time.perf_counter()
            writer.write(request)
            status, _ = await read_response(reader)
            result.latencies_s.append(time.perf_counter() - start)
            result.statuses[status] = result.statuses.get(status, 0) + 1
    finally:
        writer.close()
        await writer.wait_closed()


async def run_load(
    host: str,
    port: int,
    request: bytes,
    *,
    connections: int,
    requests: int,
    max_seconds: float,
) -> LoadResult:
    """Send `request` over `connections` keep-alive connections until `requests` have been
    answered or `max_seconds` have passed, whichever comes first."""
    result = LoadResult()
    budget = [requests]
    start = time.perf_counter()
    deadline = start + max_seconds
    await asyncio.gather(
        *(
            _connection(
                host=host,
                port=port,
                request=request,
                result=result,
                budget=budget,
                deadline=deadline,
            )
            for _ in range(connections)
        )
    )
    result.wall_s = time.perf_counter() - start
    return result


async def request_once(host: str, port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        return await read_response(reader)
    finally:
        writer.close()
        await writer.wait_closed()
