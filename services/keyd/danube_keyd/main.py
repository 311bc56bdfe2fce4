"""`danube-keyd`: wire keyd together and serve until SIGTERM or SIGINT; SIGHUP reloads
the keyring.

Exit codes: 0 after a clean stop, 2 for a bad configuration, a refused key file or an
audit path keyd cannot append to (one line naming the path and the fix), 1 for anything
that fails at run time (such as another keyd already serving the socket directory).
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Callable, Sequence
from types import FrameType

import zmq

from danube_keyd.audit import AuditLog, AuditOpenRefused, load_or_create_audit_key
from danube_keyd.dispatcher import Dispatcher, Peer
from danube_keyd.encryption_counter import CounterUnavailable, EncryptionCounter
from danube_keyd.hardening import (
    MEMORY_DONTDUMP,
    MEMORY_LOCKED,
    MEMORY_UNPROTECTED,
    AlreadyRunning,
    DirectoryLock,
    disable_core_dumps,
    exclude_from_dumps,
    lock_memory,
    prepare_socket_dir,
)
from danube_keyd.keyring import Keyring
from danube_keyd.secret_cache import SecretCache
from danube_keyd.socket_server import KeydServer
from danube_keyd.wiping import zero
from danube_shared.config import KeydSettings, Settings
from danube_shared.errors import ConfigError, DanubeError, KeyFileError
from danube_shared.keyd_protocol import MAX_CACHED_JOBS
from danube_shared.logs import get_logger
from danube_shared.program import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    program_parser,
    start_program,
)

PROG = "danube-keyd"
log = get_logger("danube_keyd")


def main(argv: Sequence[str] | None = None) -> int:
    parser = program_parser(PROG, "The Danube key daemon: encryption and per-job secrets.")
    args = parser.parse_args(argv)
    settings = start_program(PROG, args.config)
    return run(settings)


def run(settings: Settings) -> int:
    """Harden the process, load the keyring, open the audit log, take the socket
    directory and serve."""
    keyd = settings.keyd
    for problem in disable_core_dumps():
        log.warning("process hardening incomplete", problem=problem)
    # mlockall first, so the key buffers are locked from their first byte; where it is
    # not permitted, each key buffer is marked MADV_DONTDUMP as it is read.
    marked: list[bool] = []
    locked = lock_memory()

    def mark(buffer: bytearray) -> None:
        marked.append(exclude_from_dumps(buffer))

    on_key_buffer = None if locked else mark
    keyring = _load_keyring(keyd, on_key_buffer)
    audit = _open_audit(keyd, on_key_buffer)
    if locked:
        protection = MEMORY_LOCKED
    elif marked and all(marked):
        protection = MEMORY_DONTDUMP
    else:
        protection = MEMORY_UNPROTECTED
    log.info("memory protection", applied=protection)
    lock = _take_socket_dir(keyd)
    try:
        return _serve(
            keyd,
            keyring,
            audit,
            lambda: Keyring.load(keyd.key_path, on_key_buffer=on_key_buffer),
        )
    finally:
        audit.close()
        lock.release()


def _load_keyring(
    keyd: KeydSettings, on_key_buffer: Callable[[bytearray], object] | None
) -> Keyring:
    """The active key and the older ones beside it; exits 2 naming the fix if a file is
    refused."""
    try:
        return Keyring.load(keyd.key_path, on_key_buffer=on_key_buffer)
    except KeyFileError as exc:
        fail(PROG, exc.message, EXIT_USAGE)


def _open_audit(
    keyd: KeydSettings, on_key_buffer: Callable[[bytearray], object] | None
) -> AuditLog:
    """The audit chain at `keyd.audit_path` under `<key dir>/audit.key` (made if
    absent); exits 2 if either cannot be used: keyd never serves unaudited."""
    try:
        audit_key = load_or_create_audit_key(keyd.key_path)
    except KeyFileError as exc:
        fail(PROG, exc.message, EXIT_USAGE)
    try:
        if on_key_buffer is not None:
            on_key_buffer(audit_key)
        # The head follows each reply (KeydServer runs Dispatcher.finish_audit); the
        # line itself is still written before the reply.
        audit = AuditLog.open(keyd.audit_path, audit_key, defer_head=True)
    except AuditOpenRefused as exc:
        fail(PROG, exc.message, EXIT_USAGE)
    finally:
        zero(audit_key)
    if audit.startup_problem is not None:
        log.warning("audit chain damaged", problem=audit.startup_problem)
    return audit


def _take_socket_dir(keyd: KeydSettings) -> DirectoryLock:
    """Prepare and lock the socket directory; exits 2 if it is unfit, 1 if it is taken."""
    try:
        prepare_socket_dir(keyd.socket_dir)
    except ConfigError as exc:
        fail(PROG, exc.message, EXIT_USAGE)
    lock = DirectoryLock(keyd.socket_dir)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        fail(PROG, str(exc), EXIT_FAILURE)
    except OSError as exc:
        fail(PROG, f"cannot lock {lock.path}: {exc.strerror}", EXIT_FAILURE)
    return lock


def _serve(
    keyd: KeydSettings, keyring: Keyring, audit: AuditLog, load_keyring: Callable[[], Keyring]
) -> int:
    cache = SecretCache(keyd.cache_ttl_s, max_jobs=MAX_CACHED_JOBS, max_bytes=keyd.cache_max_bytes)
    counter = EncryptionCounter(keyd.key_path)
    try:
        active_count: int | None = counter.count(keyring.active_id)
    except CounterUnavailable as exc:
        active_count = None
        log.warning("encryption count unreadable; encryption refused", reason=exc.message)
    boot_id = uuid.uuid4().hex
    dispatcher = Dispatcher(
        keyring,
        cache,
        boot_id=boot_id,
        counter=counter,
        audit=audit,
        load_keyring=load_keyring,
    )
    server = KeydServer(keyd, dispatcher, cache, keyd_uid=os.geteuid())
    stop_signals: list[int] = []
    reloads: list[int] = []
    wake_read, wake_write = socket.socketpair()
    wake_read.settimeout(0.0)  # non-blocking
    wake_write.settimeout(0.0)

    def note_signal(signum: int, _frame: FrameType | None) -> None:
        # Only noted here; the byte on the wakeup fd wakes the loop, which acts on it.
        (reloads if signum == signal.SIGHUP else stop_signals).append(signum)

    def on_wakeup() -> bool:
        if stop_signals:
            return True
        while reloads:
            reloads.pop()
            try:
                dispatcher.reload_keys(Peer())
            except DanubeError as exc:
                log.warning(
                    "keyring not reloaded on SIGHUP; the loaded one stays", reason=exc.message
                )
        return False

    previous_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
    previous_handlers = {
        signum: signal.signal(signum, note_signal)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        server.bind()
        log.info(
            "keyd started",
            boot_id=boot_id,
            key_id=keyring.active_id.hex(),
            key_ids=[key_id.hex() for key_id in keyring.key_ids],
            encryptions=active_count,
            encryption_limit=counter.limit,
            audit_path=str(keyd.audit_path),
            cache_max_bytes=keyd.cache_max_bytes,
            control_socket=str(server.control_path),
            worker_socket=str(server.worker_path),
            control_uids=sorted({os.geteuid(), *keyd.control_uids}),
            worker_uids=sorted({os.geteuid(), *keyd.worker_uids}),
            cache_ttl_s=keyd.cache_ttl_s,
        )
        server.serve(wake_read.fileno(), on_wakeup)
    except zmq.ZMQError:
        log.exception("keyd failed")
        return EXIT_FAILURE
    finally:
        server.close()
        cache.clear()
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        wake_read.close()
        wake_write.close()
    log.info(
        "keyd stopped",
        signal=signal.Signals(stop_signals[0]).name if stop_signals else None,
        encryptions=counter.counts(),
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
