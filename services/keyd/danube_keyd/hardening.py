"""What keyd does to its own process and its socket directory before it serves.

No core dumps and no ptrace of keyd by its own account (a core file or a debugger would
hold the key), a socket directory that only keyd can write, and an exclusive lock in it
so that a second keyd stops instead of unlinking the first one's sockets (ZeroMQ's ipc
bind replaces an existing socket file without a word). Its pages are kept out of swap
(`mlockall`) where the host permits it, else its key buffers out of dumps
(`MADV_DONTDUMP`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import resource
import stat
import sys
from pathlib import Path

from danube_shared.errors import ConfigError
from danube_shared.keyd_protocol import LOCK_FILE_NAME

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4


def disable_core_dumps() -> list[str]:
    """Set RLIMIT_CORE to 0 and PR_SET_DUMPABLE to 0; returns what could not be done."""
    problems: list[str] = []
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        problems.append(f"RLIMIT_CORE: {exc}")
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            problems.append(f"PR_SET_DUMPABLE: {os.strerror(ctypes.get_errno())}")
    else:
        problems.append("PR_SET_DUMPABLE: not available on this platform")
    return problems


def is_dumpable() -> bool | None:
    """Whether this process may dump core or be traced by its own account (None if the
    platform cannot say)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))


def prepare_socket_dir(socket_dir: Path) -> None:
    """Create `socket_dir` 0750 if missing; refuse one that keyd does not own or that
    others can write (they could replace the sockets). Raises `ConfigError`."""
    uid = os.geteuid()
    try:
        socket_dir.mkdir(mode=0o750, parents=True)
        socket_dir.chmod(0o750)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(
            f"keyd.socket_dir {socket_dir} cannot be created: {exc.strerror}; create it "
            f"owned by keyd's account (uid {uid}), mode 0750"
        ) from None
    info = socket_dir.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"keyd.socket_dir {socket_dir} is not a directory; point it at a directory "
            "owned by keyd's account"
        )
    if info.st_uid != uid:
        raise ConfigError(
            f"keyd.socket_dir {socket_dir} is owned by uid {info.st_uid}, not keyd's uid "
            f"{uid}; fix: chown {uid} {socket_dir}"
        )
    if info.st_mode & 0o022:
        raise ConfigError(
            f"keyd.socket_dir {socket_dir} is group- or world-writable (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); fix: chmod 750 {socket_dir}"
        )


class AlreadyRunning(RuntimeError):
    """Another keyd holds the lock in the socket directory."""


class DirectoryLock:
    """An exclusive `flock` on `socket_dir/keyd.lock`, held for keyd's lifetime.

    The file is never removed: unlinking a lock file lets a third process lock a new
    inode while the second still holds the old one. The kernel releases the lock when
    keyd exits, however it exits.
    """

    def __init__(self, socket_dir: Path) -> None:
        self.path = socket_dir / LOCK_FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(
                    f"another keyd (pid {holder}) holds {self.path} and serves this "
                    "socket directory; stop it first, or give this one another "
                    "keyd.socket_dir"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


_MCL_CURRENT = 1
_MCL_FUTURE = 2
_MADV_DONTDUMP = 16
_CAP_IPC_LOCK = 14  # Linux's value, the same on every architecture

MEMORY_LOCKED = "mlockall"
MEMORY_DONTDUMP = "madvise_dontdump"
MEMORY_UNPROTECTED = "none"


def lock_memory() -> bool:
    """`mlockall(MCL_CURRENT|MCL_FUTURE)`, only where the memlock limit cannot bite later:
    with MCL_FUTURE every later mapping must fit under RLIMIT_MEMLOCK too, so under a
    finite limit a grown heap or a new thread stack would fail with ENOMEM mid-request.
    CAP_IPC_LOCK (which root usually has, not always in a container) or an unlimited
    RLIMIT_MEMLOCK qualifies. Returns whether the pages are now locked (out of swap)."""
    if not sys.platform.startswith("linux"):
        return False
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY and not _has_capability(_CAP_IPC_LOCK):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) == 0


def _has_capability(bit: int) -> bool:
    """Whether this process's effective capability set holds capability `bit`."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def exclude_from_dumps(buffer: bytearray) -> bool:
    """`madvise(MADV_DONTDUMP)` on the pages holding `buffer` (a key buffer): a core
    dump, if one is ever made despite `disable_core_dumps`, leaves them out. Whole pages
    are marked, so neighbouring heap objects are left out too, which costs nothing.
    Returns whether the kernel accepted it."""
    if not sys.platform.startswith("linux") or not buffer:
        return False
    page = os.sysconf("SC_PAGE_SIZE")
    view = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    try:
        start = ctypes.addressof(view)
    finally:
        del view  # releases the buffer export, so the bytearray can be resized again
    first = start - start % page
    end = start + len(buffer)
    length = (end - first + page - 1) // page * page
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(length), _MADV_DONTDUMP) == 0


def protect_memory(key_buffers: list[bytearray]) -> str:
    """Keep keyd's pages out of swap and dumps as far as this host permits: all memory
    locked (`mlockall`), else the key buffers marked `MADV_DONTDUMP`. Returns which one
    applied (`MEMORY_LOCKED`, `MEMORY_DONTDUMP` or `MEMORY_UNPROTECTED`) for main() to
    log. Call it once the key buffers are read and before they are zeroed: `mlockall`
    covers everything mapped then and later, `MADV_DONTDUMP` only the pages given."""
    if lock_memory():
        return MEMORY_LOCKED
    if key_buffers and all(exclude_from_dumps(buffer) for buffer in key_buffers):
        return MEMORY_DONTDUMP
    return MEMORY_UNPROTECTED
