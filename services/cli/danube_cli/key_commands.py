"""`danube key rotate | rewrap | retire KEY_ID | status` and `danube audit verify`
(DESIGN 14): the operator's side of the keyring, through keyd's control socket and the
database.

Run them as keyd's account (the key files are its own, and its uid is always allowed on
the control socket). Each prints plain lines for a person and exits 0, 1 when it could
not do its job (saying why), or 2 for a bad key id.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from danube_cli.secret_rewrap import (
    DEFAULT_BATCH,
    RewrapProgress,
    count_under,
    rewrap_all,
    secrets_per_key,
)
from danube_keyd.keyring import (
    RetireRefused,
    key_id_hex,
    parse_key_id,
    retire,
    rotate,
)
from danube_shared.config import KeydSettings, Settings
from danube_shared.db.engine import Database
from danube_shared.errors import DanubeError, KeydRejected, KeydUnavailable, KeyFileError
from danube_shared.keyd_control_client import KeydControlClient
from danube_shared.keyd_protocol import control_socket_path
from danube_shared.program import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

# rewrap of a full batch and audit_verify of a long chain take longer than one request of
# the API: the commands wait up to this much per request.
COMMAND_TIMEOUT_MS = 120_000

T = TypeVar("T")


def _say(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr, flush=True)  # noqa: T201 -- the command talks to its operator


def _out(line: str) -> None:
    print(line, flush=True)  # noqa: T201 -- the command's output


async def _with_keyd(
    keyd: KeydSettings, use: Callable[[KeydControlClient], Awaitable[T]], *, timeout_ms: int
) -> T:
    client = KeydControlClient(keyd, timeout_ms=timeout_ms)
    try:
        return await use(client)
    finally:
        await client.close()


def _keyd_running(keyd: KeydSettings) -> bool:
    """Whether keyd's control socket is there (keyd removes it when it stops)."""
    return control_socket_path(keyd.socket_dir).exists()


async def _reload(keyd: KeydSettings) -> Any:
    return await _with_keyd(
        keyd, lambda client: client.keys_reload(), timeout_ms=keyd.request_timeout_ms
    )


# danube key rotate


def run_key_rotate(settings: Settings) -> int:
    """Write a new active key (the old one stays under its id), have keyd reload, and
    print the old and new key ids."""
    prog = "danube key rotate"
    keyd = settings.keyd
    try:
        old_id, new_id = rotate(keyd.key_path)
    except (KeyFileError, OSError) as exc:
        _say(prog, f"key not rotated: {exc}")
        return EXIT_FAILURE
    _out(f"old key {key_id_hex(old_id)}")
    _out(f"new key {key_id_hex(new_id)}")
    if not _keyd_running(keyd):
        _say(prog, "keyd is not running; it loads the new key when it starts")
        return EXIT_OK
    try:
        reply = asyncio.run(_reload(keyd))
    except (KeydUnavailable, KeydRejected) as exc:
        _say(
            prog,
            f"the new key is written but keyd did not reload: {exc}; send keyd SIGHUP or "
            "run `danube key rotate` again once keyd answers",
        )
        return EXIT_FAILURE
    _say(
        prog,
        f"keyd encrypts under {key_id_hex(reply.key_id)} now; run `danube key rewrap` to "
        "move the stored secrets to it",
    )
    return EXIT_OK


# danube key rewrap


def run_key_rewrap(
    settings: Settings, *, batch_size: int = DEFAULT_BATCH, pause_ms: int = 0
) -> int:
    """Re-encrypt every stored secret not under keyd's active key, in committed batches."""
    prog = "danube key rewrap"
    if not 1 <= batch_size <= 1000:
        _say(prog, "--batch-size is between 1 and 1000 (keyd's limit per request)")
        return EXIT_USAGE
    try:
        progress, active_id = asyncio.run(_rewrap(settings, batch_size, pause_ms, prog))
    except KeydRejected as exc:
        hint = (
            "; rotate the key first (`danube key rotate`)" if exc.reason == "key_exhausted" else ""
        )
        _say(prog, f"stopped: {exc}{hint}; what was committed stays, run it again to go on")
        return EXIT_FAILURE
    except (KeydUnavailable, DanubeError) as exc:
        _say(prog, f"stopped: {exc}; what was committed stays, run it again to go on")
        return EXIT_FAILURE
    _out(
        f"rewrapped {progress.rewrapped} secrets to key {key_id_hex(active_id)} in "
        f"{progress.batches} batches"
    )
    if progress.changed_meanwhile:
        _say(prog, f"{progress.changed_meanwhile} secrets changed meanwhile; run it again")
    if progress.unreadable:
        _say(
            prog,
            f"{len(progress.unreadable)} secrets do not open under any loaded key and were "
            f"left as they are: {', '.join(progress.unreadable)}",
        )
        return EXIT_FAILURE
    return EXIT_OK


async def _rewrap(
    settings: Settings, batch_size: int, pause_ms: int, prog: str
) -> tuple[RewrapProgress, bytes]:
    database = Database.open(settings.database)
    client = KeydControlClient(settings.keyd, timeout_ms=COMMAND_TIMEOUT_MS)

    async def between(progress: RewrapProgress) -> None:
        _say(prog, f"batch {progress.batches}: {progress.rewrapped} secrets rewrapped so far")
        if pause_ms:
            await asyncio.sleep(pause_ms / 1000)

    try:
        active_id = (await client.ping()).key_id
        progress = await rewrap_all(
            database, client.rewrap, active_id, batch_size=batch_size, between_batches=between
        )
        return progress, active_id
    finally:
        await client.close()
        await database.dispose()


# danube key retire KEY_ID


def run_key_retire(settings: Settings, key_id_text: str) -> int:
    """Delete an old key that no stored secret uses, and have keyd reload."""
    prog = "danube key retire"
    try:
        key_id = parse_key_id(key_id_text)
    except DanubeError as exc:
        _say(prog, exc.message)
        return EXIT_USAGE
    try:
        in_use = asyncio.run(_count_under(settings, key_id))
    except DanubeError as exc:
        _say(prog, f"cannot count the secrets under {key_id_hex(key_id)}: {exc}")
        return EXIT_FAILURE
    if in_use:
        _say(
            prog,
            f"refused: {in_use} stored secrets still use key {key_id_hex(key_id)}; run "
            "`danube key rewrap` first",
        )
        return EXIT_FAILURE
    try:
        path = retire(settings.keyd.key_path, key_id)
    except (RetireRefused, KeyFileError) as exc:
        _say(prog, f"refused: {exc.message}")
        return EXIT_FAILURE
    _out(f"retired key {key_id_hex(key_id)} ({path} deleted)")
    if _keyd_running(settings.keyd):
        try:
            asyncio.run(_reload(settings.keyd))
        except (KeydUnavailable, KeydRejected) as exc:
            _say(prog, f"keyd did not reload: {exc}; send keyd SIGHUP")
            return EXIT_FAILURE
    return EXIT_OK


async def _count_under(settings: Settings, key_id: bytes) -> int:
    database = Database.open(settings.database)
    try:
        return await database.read(count_under, key_id)
    finally:
        await database.dispose()


# danube key status


def run_key_status(settings: Settings) -> int:
    """The active key, the loaded ones, the stored secrets under each key, and the active
    key's encryption count against its limit."""
    prog = "danube key status"
    try:
        stats = asyncio.run(
            _with_keyd(
                settings.keyd,
                lambda client: client.stats(),
                timeout_ms=settings.keyd.request_timeout_ms,
            )
        )
    except (KeydUnavailable, KeydRejected) as exc:
        _say(prog, f"keyd does not answer: {exc}")
        return EXIT_FAILURE
    try:
        per_key = asyncio.run(_secrets_per_key(settings))
    except DanubeError as exc:
        _say(prog, f"cannot count the stored secrets: {exc}")
        return EXIT_FAILURE
    active: str = stats["key_id"]
    loaded: list[str] = stats["key_ids"]
    count = stats["encryptions"].get(active, 0)
    limit: int = stats["encryption_limit"]
    _out(f"active key: {active}")
    _out(f"loaded keys: {' '.join(loaded)}")
    _out("stored secrets per key:")
    for key_id in sorted({*loaded, *per_key}, key=lambda k: (k != active, k)):
        note = "" if key_id in loaded else "  (NOT LOADED: these secrets cannot be read)"
        _out(f"  {key_id}  {per_key.get(key_id, 0)}{note}")
    _out(f"active key encryptions: {count} of {limit} ({100 * count / limit:.4f}%)")
    warning = encryption_warning(stats)
    if warning is not None:
        _say(prog, warning)
    return EXIT_OK


async def _secrets_per_key(settings: Settings) -> dict[str, int]:
    database = Database.open(settings.database)
    try:
        per_key = await database.read(secrets_per_key)
        return {key_id_hex(key_id): count for key_id, count in per_key.items()}
    finally:
        await database.dispose()


def encryption_warning(stats: dict[str, Any]) -> str | None:
    """A warning once the active key has made more than half its encryptions."""
    active: str = stats["key_id"]
    count: int = stats["encryptions"].get(active, 0)
    limit: int = stats["encryption_limit"]
    if count * 2 <= limit:
        return None
    return (
        f"warning: the active key {active} has made {count} of its {limit} encryptions "
        "(past half); rotate it (`danube key rotate`, then `danube key rewrap`)"
    )


def keyd_encryption_warning(settings: Settings) -> str | None:
    """`encryption_warning` of the running keyd, or None if keyd does not answer."""
    if not _keyd_running(settings.keyd):
        return None
    try:
        stats = asyncio.run(
            _with_keyd(
                settings.keyd,
                lambda client: client.stats(),
                timeout_ms=settings.keyd.request_timeout_ms,
            )
        )
    except (KeydUnavailable, KeydRejected):
        return None
    return encryption_warning(stats)


# danube audit verify


def run_audit_verify(settings: Settings) -> int:
    """keyd's check of its audit chain: exit 0 intact, 1 broken (naming the first bad
    line) or when keyd cannot be asked."""
    prog = "danube audit verify"
    try:
        verdict = asyncio.run(
            _with_keyd(
                settings.keyd, lambda client: client.audit_verify(), timeout_ms=COMMAND_TIMEOUT_MS
            )
        )
    except (KeydUnavailable, KeydRejected) as exc:
        _say(prog, f"keyd does not answer: {exc}")
        return EXIT_FAILURE
    if verdict.intact:
        _out(f"audit chain intact: {verdict.records} records")
        return EXIT_OK
    where = f"line {verdict.first_bad_line}" if verdict.first_bad_line is not None else "the head"
    _out(
        f"audit chain BROKEN at {where} ({verdict.records} records before it): "
        f"{verdict.problem or 'the chain does not verify'}"
    )
    return EXIT_FAILURE
