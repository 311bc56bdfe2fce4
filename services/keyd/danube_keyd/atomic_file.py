"""Small files keyd replaces whole and durably: a key, a counter, the audit chain's head.

Each write goes to a temporary name in the same directory, is fsynced, renamed (or
linked) over the final name and the directory is fsynced, so a crash leaves either the old
content or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import errno
import os


def fsync_directory(dir_fd: int) -> None:
    """Make renames and unlinks in the directory open as `dir_fd` durable."""
    os.fsync(dir_fd)


def write_new_file(
    dir_fd: int, name: str, data: bytes | bytearray, *, replace: bool, durable: bool = True
) -> None:
    """Write `data` as `name` (mode 0600) in the directory open as `dir_fd`.

    With `replace`, an existing `name` is replaced atomically (rename); without it, an
    existing `name` is kept and `FileExistsError` raised (link refuses to overwrite).
    With `durable` (the default) the file and the directory are fsynced; without it the
    replacement is still atomic for every reader and survives keyd being killed, only not
    a power loss."""
    temporary = f".{name}.{os.getpid()}.tmp"
    fd = os.open(
        temporary,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dir_fd,
    )
    try:
        try:
            os.fchmod(fd, 0o600)  # the mode given to open is filtered by the umask
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, "short write", name)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.link(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    finally:
        with contextlib.suppress(FileNotFoundError):  # renamed away: nothing left behind
            os.unlink(temporary, dir_fd=dir_fd)
    if durable:
        fsync_directory(dir_fd)


def open_directory(path: str | os.PathLike[str]) -> int:
    """An `O_DIRECTORY` descriptor on `path`; the caller closes it."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
