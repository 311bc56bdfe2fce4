"""Shipping one step's output to the API's log route (DESIGN sections 7 and 12.3): masked
first, then sent at least every second or every 64 KiB, each piece at the byte offset the
API has stored so far.

Every byte goes through the step's `MaskStream` before it is buffered, so nothing that
leaves the worker is unmasked. An append that fails on the wire (`ApiUnavailable`) is sent
again with the same offset and the same bytes: the API stores a repeat of bytes it already
has as a no-op, so a retry never duplicates output. A 409 names the length the API holds;
if that length falls inside the piece being sent (an earlier attempt did arrive), the
shipper resumes from there; any other gap means the two sides disagree about the log, and
shipping stops with `LogRejected`. A 413 (the step's log is at `api.max_log_bytes`) ends
shipping for the step quietly: the step runs on, its further output is dropped.

A `cancel_requested` in an append's answer is passed to the caller's callback at once,
and so is a failure of the once-a-second flush (which the step's next write, or its end,
then raises).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, Final

from danube_shared.errors import DanubeError
from danube_shared.logs import get_logger
from danube_worker.api_client import ApiClient, ApiRefused, ApiUnavailable
from danube_worker.delayed_task import DelayedTask
from danube_worker.masking import MaskStream

FLUSH_EVERY_S: Final = 1.0
FLUSH_BYTES: Final = 64 * 1024
# The API takes at most 1 MiB per append.
MAX_APPEND_BYTES: Final = 1024 * 1024
# How long an append is retried while the API cannot be reached; past it the job is given
# up (the API's lost-worker rule then fails it).
RETRY_WINDOW_S: Final = 120.0
_FIRST_BACKOFF_S: Final = 0.1
_MAX_BACKOFF_S: Final = 2.0
_LENGTH_IN_DETAIL = re.compile(r"length\D{0,40}?(\d+)")

log = get_logger(__name__)


class LogRejected(DanubeError):
    """The API refused the step's log for good; the step cannot go on being recorded."""

    code = "log_rejected"


def stored_length(problem: dict[str, Any]) -> int | None:
    """The log length a 409 problem reports: its `length` member, else the number after
    the word "length" in its detail."""
    length = problem.get("length")
    if isinstance(length, int) and length >= 0:
        return length
    found = _LENGTH_IN_DETAIL.search(str(problem.get("detail") or ""))
    return int(found.group(1)) if found else None


class LogShipper:
    """One step's output: masked, buffered, appended to the API's log route in order.

    Use as `async with`: entering starts the once-a-second flush, leaving flushes the
    stream's last bytes (on a clean exit) and stops it. `feed` is the step runner's
    output sink.
    """

    def __init__(
        self,
        api: ApiClient,
        *,
        job_id: str,
        position: int,
        stream: MaskStream,
        on_cancel_requested: Callable[[], None],
        on_failure: Callable[[], None] = lambda: None,
        flush_every_s: float = FLUSH_EVERY_S,
        flush_bytes: int = FLUSH_BYTES,
    ) -> None:
        self._api = api
        self._job_id = job_id
        self._position = position
        self._stream = stream
        self._on_cancel_requested = on_cancel_requested
        self._on_failure = on_failure
        self._flush_every_s = flush_every_s
        self._flush_bytes = flush_bytes
        self._buffer = bytearray()
        self._lock = asyncio.Lock()
        self._ticker: DelayedTask | None = None
        self._failure: BaseException | None = None
        self._full = False
        self.offset = 0
        """Bytes of this step's log the API has stored."""

    async def __aenter__(self) -> LogShipper:
        # A timer until the first second is over: most steps have ended by then.
        self._ticker = DelayedTask(self._flush_every_s, self._tick)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._ticker is not None:
            # Under the lock, the ticker is asleep or waiting for it, never halfway through
            # an append whose bytes have left the buffer.
            async with self._lock:
                self._ticker.cancel()
            await self._ticker.wait()
        if exc_type is None:
            self._buffer += self._stream.finish()
            await self.flush()

    async def feed(self, chunk: bytes) -> None:
        """Take raw output: mask it, buffer it, ship it once 64 KiB are waiting."""
        self._raise_failure()
        self._buffer += self._stream.feed(chunk)
        if len(self._buffer) >= self._flush_bytes:
            await self.flush()

    async def flush(self) -> None:
        """Ship everything buffered (masked bytes only) now."""
        self._raise_failure()
        async with self._lock:
            while self._buffer:
                piece = bytes(self._buffer[:MAX_APPEND_BYTES])
                del self._buffer[:MAX_APPEND_BYTES]
                await self._append(piece)

    async def _tick(self) -> None:
        """Flush now (a second into the step) and every second after."""
        while True:
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 -- kept and raised to the step runner by the next feed or the exit
                self._failure = exc
                self._on_failure()  # a quiet step would not feed again soon
                return
            await asyncio.sleep(self._flush_every_s)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _append(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_WINDOW_S
        backoff = _FIRST_BACKOFF_S
        while data and not self._full:
            try:
                appended = await self._api.append_log(
                    self._job_id, self._position, self.offset, data
                )
            except ApiUnavailable as exc:
                if loop.time() >= deadline:
                    raise
                log.warning(
                    "log append failed; sending it again at the same offset",
                    position=self._position,
                    offset=self.offset,
                    error=exc.message,
                )
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, _MAX_BACKOFF_S)
                continue
            except ApiRefused as exc:
                data = self._after_refusal(exc, data)
                continue
            self.offset += len(data)
            if appended.length != self.offset:
                log.warning(
                    "the API reports another log length",
                    position=self._position,
                    expected=self.offset,
                    reported=appended.length,
                )
            if appended.cancel_requested:
                self._on_cancel_requested()
            return

    def _after_refusal(self, refusal: ApiRefused, data: bytes) -> bytes:
        """What is left to send after a refusal, or `LogRejected` if nothing can be."""
        if refusal.status == 413:
            self._full = True
            log.warning(
                "step log reached the API's limit; the rest of its output is dropped",
                position=self._position,
                offset=self.offset,
            )
            return b""
        stored = stored_length(refusal.body) if refusal.status == 409 else None
        if stored is not None and self.offset < stored <= self.offset + len(data):
            # An earlier attempt arrived although its answer was lost: skip what it stored.
            log.info(
                "log resynced to the API's length",
                position=self._position,
                offset=self.offset,
                stored=stored,
            )
            data = data[stored - self.offset :]
            self.offset = stored
            return data
        log.error(
            "the API refused the step's log",
            position=self._position,
            offset=self.offset,
            status=refusal.status,
            stored=stored,
            error=refusal.message,
        )
        raise LogRejected(
            f"the API refused the log of step {self._position} at offset {self.offset}: "
            f"{refusal.message}"
        ) from None
