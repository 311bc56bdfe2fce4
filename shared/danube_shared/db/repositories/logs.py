"""Step logs: a step's output as stored chunks, appended at an offset, read from one.

An append names the byte offset it starts at, so a retry is harmless: bytes already
stored are not stored again, and only an append that would leave a gap is refused
(DESIGN 7). The step's `log_length` moves in the same transaction as the chunk insert,
by a compare-and-set UPDATE, so two appends racing for the same offset cannot both land.

Works on a synchronous `Session` (`append_at_end` on a `Connection`), inside a unit of
work (DESIGN 6). Whether the caller may append (the job's worker, the job running) is the
unit's check, not this one's.

`append_at_end` is the worker's path, its statements built once at import, on a unit's
`Connection`: an append that starts at the stored end and fits is one compare-and-set
UPDATE (found by job and position, so no lookup of the step first) and one INSERT, on
SQLite run straight on the driver's cursor (`driver_statements`: SQLAlchemy's execution
path cost more than SQLite storing the 64 KiB). Anything else (a retry, a gap, a log past
its limit, an empty body) takes the general path, `LogRepository.append`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from danube_shared.db.driver_statements import DriverStatement
from danube_shared.db.ids import new_id
from danube_shared.db.schema import LogChunk, Step
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, InvalidInput, NotFound

_STEPS = cast(Table, Step.__table__)
_CHUNKS = cast(Table, LogChunk.__table__)
# Bind names carry a `b_` prefix: an UPDATE reserves its columns' own names.
_MOVE_END: Final = DriverStatement(
    update(_STEPS)
    .where(
        _STEPS.c.job_id == bindparam("b_job_id"),
        _STEPS.c.position == bindparam("b_position"),
        _STEPS.c.log_length == bindparam("b_offset"),
        _STEPS.c.log_length + bindparam("b_size") <= bindparam("b_max"),
    )
    .values(log_length=_STEPS.c.log_length + bindparam("b_size"))
    .returning(_STEPS.c.id, _STEPS.c.log_length)
)
_CHUNK_COLUMNS: Final = ("id", "step_id", "offset", "data", "created_at")
_INSERT_CHUNK: Final = DriverStatement(insert(_CHUNKS), column_keys=_CHUNK_COLUMNS)
_STEP_ID: Final = select(_STEPS.c.id).where(
    _STEPS.c.job_id == bindparam("job_id"), _STEPS.c.position == bindparam("position")
)


class LogGap(Conflict):
    """An append starts past the end of the stored log; `length` is where it ends."""

    code = "log_gap"

    def __init__(self, step_id: str, offset: int, length: int) -> None:
        super().__init__(
            f"step {step_id} has {length} bytes of log; an append at {offset} would leave "
            f"a gap; append at {length}"
        )
        self.length = length


class LogTooLarge(InvalidInput):
    """An append would take the step's log past its limit."""

    code = "log_too_large"

    def __init__(self, step_id: str, limit: int) -> None:
        super().__init__(f"the log of step {step_id} would exceed its limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class LogSlice:
    """Stored bytes of a step's log from an offset, and the log's whole stored length."""

    data: bytes
    length: int


def append_at_end(
    connection: Connection, job_id: str, position: int, offset: int, data: bytes, *, max_bytes: int
) -> int | None:
    """The usual append: `data` at `offset` of the log of the job's step at `position`,
    when `offset` is the stored end and the log stays within `max_bytes`; the stored
    length after, or None if the append is anything else (a retry, a gap, a log past its
    limit, an empty body, no such step), for `LogRepository.append_by_position` to
    settle. Two statements on the unit's `Connection`: the length moved by
    compare-and-set, then the chunk inserted."""
    if not data or offset < 0:
        return None
    end = {
        "b_job_id": job_id,
        "b_position": position,
        "b_offset": offset,
        "b_size": len(data),
        "b_max": max_bytes,
    }
    moved = _MOVE_END.first(connection, end)
    if moved is None:
        return None
    chunk = {
        "id": new_id(),
        "step_id": moved[0],
        "offset": offset,
        "data": data,
        "created_at": utcnow(),
    }
    _INSERT_CHUNK.execute(connection, chunk)
    return int(moved[1])


class LogRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def append_at(
        self, job_id: str, position: int, offset: int, data: bytes, *, max_bytes: int
    ) -> int:
        """`append` to the log of the job's step at `position`; `NotFound` if the job has
        no such step. The usual append (at the stored end, within the limit) costs two
        statements (`append_at_end`)."""
        connection = self._session.connection()
        length = append_at_end(connection, job_id, position, offset, data, max_bytes=max_bytes)
        if length is not None:
            return length
        return self.append_by_position(job_id, position, offset, data, max_bytes=max_bytes)

    def append_by_position(
        self, job_id: str, position: int, offset: int, data: bytes, *, max_bytes: int
    ) -> int:
        """`append` to the log of the job's step at `position`, by the general path (the
        step looked up first); `NotFound` if the job has no such step."""
        step_id = (
            self._session.connection()
            .execute(_STEP_ID, {"job_id": job_id, "position": position})
            .scalar_one_or_none()
        )
        if step_id is None:
            raise NotFound(f"job {job_id} has no step at position {position}")
        return self.append(step_id, offset, data, max_bytes=max_bytes)

    def append(self, step_id: str, offset: int, data: bytes, *, max_bytes: int) -> int:
        """Store `data` at byte `offset` of the step's log; returns the stored length after.

        Bytes before the stored length are taken as a repeat and not stored again (a
        retry after a lost answer); `LogGap` if `offset` is past it; `LogTooLarge` if
        the log would pass `max_bytes`; `NotFound` for an unknown step."""
        if offset < 0:
            raise InvalidInput(f"offset must not be negative, not {offset}")
        length = self._length(step_id)
        if offset > length:
            raise LogGap(step_id, offset, length)
        new = data[length - offset :]
        if not new:
            return length
        if length + len(new) > max_bytes:
            raise LogTooLarge(step_id, max_bytes)
        # Compare-and-set: only the append that finds the length it read moves it.
        moved = self._session.execute(
            update(Step)
            .where(Step.id == step_id, Step.log_length == length)
            .values(log_length=Step.log_length + len(new))
            .returning(Step.log_length)
            .execution_options(synchronize_session=False)
        ).first()
        if moved is None:
            raise Conflict(f"the log of step {step_id} was appended to concurrently; retry")
        self._session.add(
            LogChunk(id=new_id(), step_id=step_id, offset=length, data=new, created_at=utcnow())
        )
        self._session.flush()
        return int(moved[0])

    def read(self, step_id: str, offset: int, *, max_bytes: int) -> LogSlice:
        """Up to `max_bytes` of the step's log from byte `offset` (nothing at or past the
        end), with the stored length; `NotFound` for an unknown step."""
        if offset < 0:
            raise InvalidInput(f"offset must not be negative, not {offset}")
        length = self._length(step_id)
        if offset >= length or max_bytes <= 0:
            return LogSlice(data=b"", length=length)
        # The chunk holding `offset` is the last one starting at or before it.
        first_start = (
            select(func.max(LogChunk.offset))
            .where(LogChunk.step_id == step_id, LogChunk.offset <= offset)
            .scalar_subquery()
        )
        chunks = self._session.execute(
            select(LogChunk.offset, LogChunk.data)
            .where(LogChunk.step_id == step_id, LogChunk.offset >= first_start)
            .order_by(LogChunk.offset)
            .execution_options(yield_per=16)
        )
        pieces: list[bytes] = []
        wanted = min(max_bytes, length - offset)
        got = 0
        for start, data in chunks:
            piece = data[max(offset - start, 0) :][: wanted - got]
            pieces.append(piece)
            got += len(piece)
            if got >= wanted:
                break
        chunks.close()
        return LogSlice(data=b"".join(pieces), length=length)

    def _length(self, step_id: str) -> int:
        length = self._session.scalar(select(Step.log_length).where(Step.id == step_id))
        if length is None:
            raise NotFound(f"step {step_id} not found")
        return length
