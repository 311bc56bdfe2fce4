"""Structured logging for every Danube program.

`configure_logging` is called once, from a program's `main()`; it is the only place that
touches global logging state (structlog's configuration and the root stdlib logger). Every
line is one JSON object with `timestamp` (ISO 8601 UTC), `level`, `logger`, `message`,
`process`, plus context bound through contextvars (`request_id`, `job_id`). Records from the
standard library (uvicorn, SQLAlchemy, Alembic) pass through the same processors, so they
come out in the same shape. A redaction step removes secret-bearing fields before anything
is rendered.

Danube's own lines (structlog's) are rendered by structlog and written straight to the
stdlib handler's stream, under its lock, one whole line per write: the stdlib's levels
still decide what is logged, but no `LogRecord` is made and no formatter runs. That path
(two `LogRecord`s, a caller lookup, `ProcessorFormatter`) was two thirds of a line's cost,
and the API writes a line per request.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from functools import lru_cache
from typing import Any, TextIO, cast

import structlog
from pydantic import SecretBytes, SecretStr

from danube_shared.config import LogLevel, LogSettings

TRACE = 5

LEVELS: dict[LogLevel, int] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
# The names written in the `level` field: the configuration's vocabulary.
_LEVEL_NAMES = {
    TRACE: "trace",
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}

# Field names whose values are secret material wherever they appear.
_SECRET_NAME_PARTS = ("value", "plaintext", "token", "password", "secret", "key", "ciphertext")
# ...except these, which only name or count such things.
_SAFE_NAMES = frozenset(
    {"key_id", "key_path", "token_sha256_prefix", "secret_count", "secret_names"}
)
REDACTED = "[redacted]"

Processor = Any  # structlog's processor type is a union too wide to be useful here


@lru_cache(maxsize=4096)  # field names are few and fixed; asked for every field of every line
def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    if lowered in _SAFE_NAMES:
        return False
    return any(part in lowered for part in _SECRET_NAME_PARTS)


def redact(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drop secret-bearing fields: bytes, pydantic secrets, and fields named like secrets,
    at any depth of mappings, lists and tuples."""
    for name in list(event):
        if name in ("event", "logger", "level", "timestamp"):
            continue
        event[name] = _redact_value(name, event[name])
    return event


_SECRET_TYPES = (bytes, bytearray, memoryview, SecretStr, SecretBytes)


def _redact_value(name: object, value: object) -> object:
    if (isinstance(name, str) and _is_secret_name(name)) or isinstance(value, _SECRET_TYPES):
        return REDACTED
    if isinstance(value, Mapping):
        items = cast("Mapping[object, object]", value)
        return {key: _redact_value(key, item) for key, item in items.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(None, item) for item in cast("Sequence[object]", value)]
    return value


def _level_name(
    _logger: object, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event.get("_record")
    number = record.levelno if isinstance(record, logging.LogRecord) else None
    if number is None:
        number = _METHOD_LEVELS.get(method, logging.INFO)
    event["level"] = _LEVEL_NAMES.get(number, method)
    return event


_METHOD_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def _filter_by_level(
    logger: logging.Logger, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # structlog's own filter knows no TRACE level.
    if not logger.isEnabledFor(_METHOD_LEVELS.get(method, logging.INFO)):
        raise structlog.DropEvent
    return event


def _drop_color_message(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # uvicorn passes an ANSI-coloured copy of some messages as `extra`.
    event.pop("color_message", None)
    return event


def _add_process(process: str) -> Processor:
    def add(
        _logger: object, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event.setdefault("process", process)
        return event

    return add


_LEADING_FIELDS = ("timestamp", "level", "logger", "message", "process")


def _rename_event(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Rename structlog's `event` to `message` and put the fixed fields first."""
    event["message"] = event.pop("event", "")
    ordered = {name: event.pop(name) for name in _LEADING_FIELDS if name in event}
    ordered.update(event)
    return ordered


def configure_logging(settings: LogSettings, process: str, stream: TextIO | None = None) -> None:
    """Route structlog and the standard library's logging to one renderer on `stream`
    (stderr by default), at the configured level and format."""
    logging.addLevelName(TRACE, "TRACE")
    level = LEVELS[settings.level]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        _level_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _add_process(process),
        structlog.processors.StackInfoRenderer(),
        redact,
    ]
    if settings.format == "json":
        renderer: Processor = structlog.processors.JSONRenderer()
        final: list[Processor] = [
            # Tracebacks as data, without frame locals: a local may hold a plaintext.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            _rename_event,
            renderer,
        ]
    else:
        final = [structlog.dev.ConsoleRenderer(colors=False, event_key="event")]

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), _drop_color_message, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler(
        stream if stream is not None else sys.stderr
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that install their own handlers would print twice or in their own format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic", "sqlalchemy"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    # aiosqlite's DEBUG lines print every call with its arguments: the SQL parameters,
    # that is stored ciphertexts and token hashes. They never go out, at any level.
    logging.getLogger("aiosqlite").setLevel(max(level, logging.INFO))

    _line_sink.handler = handler
    structlog.configure(
        processors=[_filter_by_level, *shared, *final],
        wrapper_class=DanubeLogger,
        logger_factory=_line_logger,
        cache_logger_on_first_use=True,
    )


class _LineSink:
    """The handler Danube's lines are written through: the one `configure_logging` made
    last. Loggers look it up at each line, not when made: structlog keeps a logger made
    before a later `configure_logging` (tests configure once per test)."""

    __slots__ = ("handler",)

    def __init__(self) -> None:
        self.handler: logging.StreamHandler[TextIO] = logging.StreamHandler(sys.stderr)

    def write(self, line: str) -> None:
        """One rendered line, written and flushed whole under the handler's lock, as the
        handler writes the standard library's records. A failure to write is dropped,
        as the stdlib drops it: a log line never fails the work it describes."""
        handler = self.handler
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
            handler.stream.flush()
        except (OSError, ValueError):
            pass
        finally:
            handler.release()


_line_sink = _LineSink()


class LineLogger:
    """What a structlog logger writes through: the stdlib logger of the same name for
    its name and level, and the line sink for the line structlog rendered."""

    __slots__ = ("_stdlib", "name")

    def __init__(self, stdlib: logging.Logger) -> None:
        self._stdlib = stdlib
        self.name = stdlib.name

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 -- the stdlib's name, which structlog calls
        return self._stdlib.isEnabledFor(level)

    def getEffectiveLevel(self) -> int:  # noqa: N802 -- the stdlib's name, which structlog calls
        return self._stdlib.getEffectiveLevel()

    def write(self, line: str, *_args: object, **_kwargs: object) -> None:
        _line_sink.write(line)

    def log(self, _level: int, line: str, *_args: object, **_kwargs: object) -> None:
        _line_sink.write(line)

    debug = info = warning = warn = error = exception = critical = fatal = msg = write


def _line_logger(*args: str) -> LineLogger:
    return LineLogger(logging.getLogger(args[0] if args else None))


class DanubeLogger(structlog.stdlib.BoundLogger):
    """structlog's stdlib logger plus `trace`, the level below DEBUG for wire-level detail.

    Each level method returns at once below the configured level, before structlog
    builds the event and runs its processors only for `_filter_by_level` to drop it:
    the same lines come out, and a disabled line costs a level check, not microseconds
    (keyd logs per request)."""

    def trace(self, event: str, **fields: Any) -> None:
        if not self._logger.isEnabledFor(TRACE):
            return
        args, kwargs = self._process_event("trace", event, fields)
        self._logger.log(TRACE, *args, **kwargs)

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.DEBUG):
            return None
        return super().debug(event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.INFO):
            return None
        return super().info(event, *args, **kw)

    def warning(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.WARNING):
            return None
        return super().warning(event, *args, **kw)

    warn = warning


def get_logger(name: str) -> DanubeLogger:
    """A logger named `name` (the module's `__name__` by convention). Cheap to call at
    import time: nothing is configured until the first line is logged."""
    return structlog.stdlib.get_logger(name)  # pyright: ignore[reportReturnType] -- configured wrapper_class
