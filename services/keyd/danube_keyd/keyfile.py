"""The encryption key file: the rules keyd loads it by, and `danube keygen`, which writes it.

The key is exactly 32 raw bytes in a regular file (not a symlink) owned by keyd's uid,
with no group or other permission bits, in a directory owned by keyd's uid that is not
group- or world-writable. Each refusal is a `KeyFileError` whose message names the path
and the command that fixes it.

The directory is opened once and every key in it is read through that descriptor
(`openat`), so a directory swapped after its check cannot hand keyd another file. A key
file is opened non-blocking, so a FIFO (or a device) at the key path is refused by
`fstat` instead of hanging keyd on an open that waits for a writer.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from danube_shared.config import Settings
from danube_shared.errors import KeyFileError
from danube_shared.keyd_protocol import KEY_BYTES, key_id_for
from danube_shared.program import EXIT_FAILURE, EXIT_OK

# O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer, forever.
# O_NOFOLLOW: a symlink is refused by the kernel, not by a racy lstat first.
_KEY_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


def load_key(path: Path, *, owner_uid: int | None = None) -> bytearray:
    """Read the key at `path` under the rules above; the caller zeroes the returned buffer
    once it has built its cipher. `owner_uid` defaults to this process's effective uid."""
    uid = os.geteuid() if owner_uid is None else owner_uid
    dir_fd = open_key_directory(path.parent, owner_uid=uid)
    try:
        return read_key_at(dir_fd, path, owner_uid=uid)
    finally:
        os.close(dir_fd)


def open_key_directory(directory: Path, *, owner_uid: int) -> int:
    """An `O_DIRECTORY` descriptor on `directory` once it passes the directory rules
    (owned by `owner_uid`, not group- or world-writable); the caller closes it."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyFileError(
            f"key directory {directory} cannot be opened: {exc.strerror}; create it "
            "with `danube keygen`"
        ) from None
    try:
        check_key_directory(directory, os.fstat(dir_fd), owner_uid=owner_uid)
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd


def check_key_directory(directory: Path, info: os.stat_result, *, owner_uid: int) -> None:
    """Refuse a key directory another account owns or others can write (they could
    swap the key)."""
    if info.st_uid != owner_uid:
        raise KeyFileError(
            f"key directory {directory} is owned by uid {info.st_uid}, not keyd's uid "
            f"{owner_uid}; fix: chown {owner_uid} {directory}"
        )
    if info.st_mode & 0o022:
        raise KeyFileError(
            f"key directory {directory} is group- or world-writable (mode "
            f"{stat.S_IMODE(info.st_mode):04o}), so others could swap the key; "
            f"fix: chmod go-w {directory}"
        )


def read_key_at(dir_fd: int, path: Path, *, owner_uid: int) -> bytearray:
    """Read the key file named `path.name` in the directory open as `dir_fd` (`path` is
    for messages only) into a fresh 32-byte buffer, with no other copy made."""
    try:
        fd = os.open(path.name, _KEY_OPEN_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {path} does not exist; create it with `danube keygen` "
            "(as keyd's account), or restore it from your backup"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileError(
                f"key file {path} is a symlink; point keyd.key_path at the key file "
                "itself, or move the key file to this path"
            ) from None
        raise KeyFileError(
            f"key file {path} cannot be opened: {exc.strerror}; make it readable by "
            f"keyd's account (uid {owner_uid})"
        ) from None
    try:
        _check_key_file(path, os.fstat(fd), owner_uid=owner_uid)
        key = bytearray(KEY_BYTES)
        try:
            read = os.readv(fd, [key])
        except OSError as exc:
            read = -1
            problem = exc.strerror
        else:
            problem = "it changed while keyd read it"
        if read != KEY_BYTES:
            key[:] = bytes(KEY_BYTES)
            raise KeyFileError(f"key file {path} cannot be read: {problem}; start keyd again")
        return key
    finally:
        os.close(fd)


def _check_key_file(path: Path, info: os.stat_result, *, owner_uid: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(
            f"key file {path} is not a regular file; point keyd.key_path at the key "
            "file written by `danube keygen`"
        )
    if info.st_uid != owner_uid:
        raise KeyFileError(
            f"key file {path} is owned by uid {info.st_uid}, not keyd's uid {owner_uid}; "
            f"fix: chown {owner_uid} {path}"
        )
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}, which lets "
            f"group or others in; fix: chmod 600 {path}"
        )
    if info.st_size != KEY_BYTES:
        raise KeyFileError(
            f"key file {path} holds {info.st_size} bytes, not {KEY_BYTES}; restore it "
            "from your backup (a new key from `danube keygen` cannot open existing "
            "secrets)"
        )


def _check_directory(directory: Path) -> None:
    try:
        info = directory.stat()
    except OSError as exc:
        raise KeyFileError(
            f"key directory {directory} cannot be examined: {exc.strerror}; create it "
            "with `danube keygen`"
        ) from None
    if info.st_mode & 0o022:
        raise KeyFileError(
            f"key directory {directory} is group- or world-writable (mode "
            f"{stat.S_IMODE(info.st_mode):04o}), so others could swap the key; "
            f"fix: chmod go-w {directory}"
        )


def _check_private_directory(directory: Path) -> None:
    """Refuse an existing key directory that lets group or others in at all: a new key
    goes only where nobody but its owner can even list it (DESIGN: the directory is 0700).
    keyd's load is laxer on purpose (only write bits), so that a key already in service is
    not refused over a readable directory; keygen is where the directory is set up."""
    _check_directory(directory)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"key directory {directory} has mode {mode:04o}, which lets group or others "
            f"in; a key directory must be 0700; fix: chmod 700 {directory}"
        )


def write_new_key(path: Path) -> bytes:
    """Write 32 random bytes to `path` (0600), atomically and never over an existing file,
    in a directory that is 0700: made so if missing, refused if it lets anyone else in.
    Returns the new key's id."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)  # mkdir's mode is filtered by the umask
    # An existing key is the answer whatever the directory: it is never to be replaced.
    if path.exists() or path.is_symlink():
        raise FileExistsError(errno.EEXIST, "key file exists", str(path))
    _check_private_directory(directory)
    key = bytearray(secrets.token_bytes(KEY_BYTES))
    temporary = directory / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        try:
            os.fchmod(fd, 0o600)
            if os.write(fd, key) != KEY_BYTES:
                raise OSError(errno.EIO, "short write", str(temporary))
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() fails if the name exists, so a key that appeared meanwhile is kept.
        os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    key_id = key_id_for(key)
    key[:] = bytes(KEY_BYTES)
    return key_id


def run_keygen(settings: Settings) -> int:
    """`danube keygen`: write a new key to `keyd.key_path`; exit 1 if one exists."""
    # Imported here: `danube up` writes its first key through `write_new_key` before it
    # starts the stack, and structlog would delay that start by a tenth of a second.
    from danube_shared.logs import get_logger

    log = get_logger(__name__)
    path = settings.keyd.key_path
    try:
        key_id = write_new_key(path)
    except FileExistsError:
        problem = (
            "a key file exists there; it is left as it is (move it away first only if you "
            "mean to lose every secret it encrypted)"
        )
    except KeyFileError as exc:
        problem = exc.message
    except OSError as exc:
        problem = f"{exc.strerror}: {exc.filename}"
    else:
        log.info(
            "key written; back it up: without it no stored secret can be read",
            key_path=str(path),
            key_id=key_id.hex(),
        )
        return EXIT_OK
    log.error("key not written", key_path=str(path), reason=problem)
    return EXIT_FAILURE
