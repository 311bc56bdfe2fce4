"""Structured logging: one JSON object per line, levels, stdlib records, redaction."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import SecretStr
from sqlalchemy import text

from danube_shared.config import DatabaseSettings, LogSettings
from danube_shared.db.engine import Database
from danube_shared.logs import REDACTED, configure_logging, get_logger

LEVEL_ORDER = ["trace", "debug", "info", "warn", "error"]


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.NOTSET)


def capture(level: str = "trace", fmt: str = "json") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(LogSettings(level=level, format=fmt), "danube-test", stream)  # pyright: ignore[reportArgumentType] -- parametrised literals
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def emit_each_level() -> None:
    log = get_logger("danube.test")
    log.trace("at trace")
    log.debug("at debug")
    log.info("at info")
    log.warning("at warn")
    log.error("at error")


def test_each_line_is_one_json_object_with_the_contract_fields():
    stream = capture()
    get_logger("danube.test").info("job started", job_id="j-1")
    (line,) = lines(stream)
    assert list(line)[:5] == ["timestamp", "level", "logger", "message", "process"]
    assert line["level"] == "info"
    assert line["logger"] == "danube.test"
    assert line["message"] == "job started"
    assert line["process"] == "danube-test"
    assert line["job_id"] == "j-1"
    assert line["timestamp"].endswith("Z")


@pytest.mark.parametrize("level", LEVEL_ORDER)
def test_configured_level_filters_lower_levels(level: str):
    stream = capture(level)
    emit_each_level()
    written = [line["level"] for line in lines(stream)]
    assert written == LEVEL_ORDER[LEVEL_ORDER.index(level) :]


def test_trace_is_below_debug():
    stream = capture("debug")
    get_logger("danube.test").trace("wire detail")
    assert stream.getvalue() == ""
    stream = capture("trace")
    get_logger("danube.test").trace("wire detail", frames=3)
    (line,) = lines(stream)
    assert line["level"] == "trace"
    assert line["frames"] == 3


class _UnreadableFields(dict[str, int]):
    """A field value the processors would walk (redaction reads every mapping)."""

    def items(self) -> Any:
        raise AssertionError("a line below the level was processed")


@pytest.mark.parametrize(
    ("level", "method"),
    [("info", "debug"), ("warn", "info"), ("error", "warning"), ("error", "warn")],
)
def test_a_line_below_the_level_is_dropped_before_its_fields_are_processed(level: str, method: str):
    """Below the configured level a call writes nothing and never runs the processor
    chain on its fields; at the level the same call is processed and written."""
    stream = capture(level)
    log = get_logger("danube.test")
    assert getattr(log, method)("too detailed", fields=_UnreadableFields(a=1)) is None
    assert stream.getvalue() == ""
    stream = capture("trace")
    getattr(get_logger("danube.test"), method)("detailed", count=2)
    (line,) = lines(stream)
    assert line["message"] == "detailed"
    assert line["count"] == 2


def test_stdlib_records_are_rendered_as_json():
    stream = capture("info")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("sqlalchemy.engine").warning("pool overflow")
    first, second = lines(stream)
    assert first["logger"] == "uvicorn.error"
    assert first["message"] == "Started server process [42]"
    assert first["level"] == "info"
    assert first["process"] == "danube-test"
    assert second["level"] == "warn"


def test_context_bound_through_contextvars_is_included():
    stream = capture()
    structlog.contextvars.bind_contextvars(request_id="r-7", job_id="j-9")
    get_logger("danube.test").info("step updated")
    logging.getLogger("uvicorn.access").info("stdlib line")
    for line in lines(stream):
        assert line["request_id"] == "r-7"
        assert line["job_id"] == "j-9"


@pytest.mark.parametrize(
    "field", ["value", "plaintext", "token", "password", "secret", "api_token", "secret_value"]
)
def test_secret_named_fields_are_redacted(field: str):
    stream = capture()
    get_logger("danube.test").info("stored", **{field: "hunter2-planted"})
    assert "hunter2-planted" not in stream.getvalue()
    (line,) = lines(stream)
    assert line[field] == REDACTED


def test_bytes_and_secretstr_values_are_redacted_whatever_their_name():
    stream = capture()
    get_logger("danube.test").info(
        "loaded", payload=b"raw-bytes-planted", other=SecretStr("secretstr-planted")
    )
    text = stream.getvalue()
    assert "raw-bytes-planted" not in text
    assert "secretstr-planted" not in text


def test_nested_secret_fields_are_redacted():
    stream = capture()
    get_logger("danube.test").info("body", body={"name": "DEPLOY_KEY", "value": "nested-planted"})
    (line,) = lines(stream)
    assert "nested-planted" not in stream.getvalue()
    assert line["body"]["name"] == "DEPLOY_KEY"


def test_secrets_inside_lists_and_tuples_are_redacted():
    stream = capture()
    get_logger("danube.test").info(
        "batch", items=[b"list-bytes-planted", {"token": "list-token-planted"}], pair=("ok", b"x")
    )
    text = stream.getvalue()
    assert "list-bytes-planted" not in text
    assert "list-token-planted" not in text
    (line,) = lines(stream)
    assert line["pair"][0] == "ok"


def test_stdlib_extra_fields_are_redacted():
    stream = capture()
    logging.getLogger("third.party").info("extra", extra={"token": "extra-planted"})
    assert "extra-planted" not in stream.getvalue()


def test_names_that_only_describe_secrets_are_kept():
    stream = capture()
    get_logger("danube.test").info("encrypted", key_id="0a1b2c3d", secret_count=3)
    (line,) = lines(stream)
    assert line["key_id"] == "0a1b2c3d"
    assert line["secret_count"] == 3


def test_exception_tracebacks_carry_no_frame_locals():
    stream = capture()
    log = get_logger("danube.test")

    def fail_holding_a_plaintext() -> None:
        plaintext = "local-planted"
        raise RuntimeError(f"boom after {len(plaintext)} bytes")

    try:
        fail_holding_a_plaintext()
    except RuntimeError:
        log.exception("failed")
    (line,) = lines(stream)
    assert line["exception"][0]["exc_type"] == "RuntimeError"
    assert "local-planted" not in stream.getvalue()


def test_console_format_is_human_readable():
    stream = capture("info", "console")
    get_logger("danube.test").info("job started", job_id="j-1")
    text = stream.getvalue()
    assert "job started" in text
    assert "job_id=j-1" in text
    assert not text.lstrip().startswith("{")


def test_uvicorn_color_message_extra_is_not_rendered():
    """uvicorn passes an ANSI-coloured copy of a message as `extra`; it is dropped."""
    stream = capture("info")
    logging.getLogger("uvicorn.error").info(
        "Started", extra={"color_message": "\x1b[32mStarted\x1b[0m"}
    )
    (line,) = lines(stream)
    assert "color_message" not in line
    assert line["message"] == "Started"


async def test_sql_parameters_never_reach_the_log_even_at_trace(tmp_path: Path):
    """aiosqlite logs every call with its arguments at DEBUG: stored ciphertexts and token
    hashes. Those records are dropped whatever the configured level."""
    stream = capture("trace")
    database = Database.open(DatabaseSettings(path=tmp_path / "t.db"), create=True)
    canary = b"ciphertext-canary-0f1e2d"
    try:
        async with database.engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (a BLOB)"))
            await connection.execute(text("INSERT INTO t VALUES (:a)"), {"a": canary})
    finally:
        await database.dispose()
    written = stream.getvalue()
    assert canary.decode() not in written
    assert canary.hex() not in written
    assert "aiosqlite" not in written


def test_lines_from_threads_and_the_stdlib_stay_whole_and_one_per_line():
    """Danube's lines go straight to the handler's stream, the stdlib's through the
    handler: both under the handler's lock, so lines written at once never interleave."""
    stream = capture("info")
    ours = get_logger("danube.test")
    theirs = logging.getLogger("uvicorn.error")

    def write(index: int) -> None:
        for number in range(200):
            ours.info("ours", thread=index, number=number)
            theirs.info("theirs %d %d", index, number)

    threads = [threading.Thread(target=write, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    written = lines(stream)
    assert len(written) == 4 * 200 * 2
    assert sum(line["message"] == "ours" for line in written) == 800
    assert all(line["process"] == "danube-test" for line in written)


def test_a_line_below_the_loggers_own_level_is_not_written():
    stream = capture("info")
    logging.getLogger("danube.quiet").setLevel(logging.WARNING)
    try:
        get_logger("danube.quiet").info("dropped")
        get_logger("danube.quiet").warning("kept")
    finally:
        logging.getLogger("danube.quiet").setLevel(logging.NOTSET)
    assert [line["message"] for line in lines(stream)] == ["kept"]
