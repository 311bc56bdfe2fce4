"""`danube-keyd`: wire keyd together and serve until SIGTERM or SIGINT.

Exit codes: 0 after a clean stop, 2 for a bad configuration or a refused key file (one
line on stderr naming the path and the fix), 1 for anything that fails at run time (such
as another keyd already serving the socket directory).
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Sequence
from types import FrameType

import zmq

from danube_keyd.aead import Aead
from danube_keyd.dispatcher import Dispatcher
from danube_keyd.hardening import (
    AlreadyRunning,
    DirectoryLock,
    disable_core_dumps,
    prepare_socket_dir,
)
from danube_keyd.keyfile import load_key
from danube_keyd.secret_cache import SecretCache
from danube_keyd.socket_server import KeydServer
from danube_keyd.wiping import zero
from danube_shared.config import KeydSettings, Settings
from danube_shared.errors import ConfigError, KeyFileError
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
    """Harden the process, load the key, take the socket directory and serve."""
    keyd = settings.keyd
    for problem in disable_core_dumps():
        log.warning("process hardening incomplete", problem=problem)
    aead = _load_cipher(keyd)
    lock = _take_socket_dir(keyd)
    try:
        return _serve(keyd, aead)
    finally:
        lock.release()


def _load_cipher(keyd: KeydSettings) -> Aead:
    """The cipher for the key file; exits 2 naming the fix if the file is refused."""
    try:
        key = load_key(keyd.key_path)
    except KeyFileError as exc:
        fail(PROG, exc.message, EXIT_USAGE)
    try:
        return Aead(key)
    finally:
        zero(key)


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


def _serve(keyd: KeydSettings, aead: Aead) -> int:
    cache = SecretCache(keyd.cache_ttl_s, max_jobs=MAX_CACHED_JOBS)
    boot_id = uuid.uuid4().hex
    server = KeydServer(
        keyd, Dispatcher(aead, cache, boot_id=boot_id), cache, keyd_uid=os.geteuid()
    )
    stop_signals: list[int] = []
    wake_read, wake_write = socket.socketpair()
    wake_read.settimeout(0.0)  # non-blocking
    wake_write.settimeout(0.0)

    def note_signal(signum: int, _frame: FrameType | None) -> None:
        stop_signals.append(signum)  # the byte on the wakeup fd ends the poll

    previous_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
    previous_handlers = {
        signum: signal.signal(signum, note_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        server.bind()
        log.info(
            "keyd started",
            boot_id=boot_id,
            key_id=aead.key_id.hex(),
            control_socket=str(server.control_path),
            worker_socket=str(server.worker_path),
            control_uids=sorted({os.geteuid(), *keyd.control_uids}),
            worker_uids=sorted({os.geteuid(), *keyd.worker_uids}),
            cache_ttl_s=keyd.cache_ttl_s,
        )
        server.serve(wake_read.fileno())
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
        encryptions=aead.encryptions,
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
