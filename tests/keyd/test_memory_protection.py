"""Keeping keyd's pages out of swap and dumps: `mlockall` where the memlock limit cannot
bite, else `MADV_DONTDUMP` on the key buffers. Each case runs in a child process: a
locked or marked process is not something to leave the test runner as."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.isolation import program_environment

_PROBE = textwrap.dedent(
    """
    import ctypes, json, re
    from danube_keyd.hardening import exclude_from_dumps, protect_memory

    key = bytearray(32)
    applied = protect_memory([key])
    grown = bytearray(64 * 1024 * 1024)  # later mappings still work after MCL_FUTURE
    grown[-1] = 1
    address = ctypes.addressof((ctypes.c_char * 32).from_buffer(key))
    flags = ""
    for block in open("/proc/self/smaps").read().split("\\n"):
        match = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", block)
        if match:
            inside = int(match[1], 16) <= address < int(match[2], 16)
        elif inside and block.startswith("VmFlags:"):
            flags = block.split(":", 1)[1].split()
            inside = False
    locked_kb = int(re.search(r"VmLck:\\s+(\\d+)", open("/proc/self/status").read())[1])
    print(json.dumps({"applied": applied, "key_page_flags": flags, "locked_kb": locked_kb}))
    """
)


def _probe(*wrapper: str, preexec_fn: Callable[[], None] | None = None) -> dict[str, Any]:
    result = subprocess.run(
        [*wrapper, sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=60,
        check=True,
        preexec_fn=preexec_fn,
    )
    return json.loads(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux memory flags")
@pytest.mark.skipif(os.geteuid() != 0, reason="mlockall needs CAP_IPC_LOCK or no memlock limit")
def test_root_locks_all_memory_and_can_still_grow() -> None:
    """As root, `protect_memory` applies `mlockall`: the pages are locked (VmLck), the
    key's page is locked (`lo`), and a 64 MiB allocation afterwards still succeeds."""
    seen = _probe()
    assert seen["applied"] == "mlockall"
    assert seen["locked_kb"] > 64 * 1024
    assert "lo" in seen["key_page_flags"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux memory flags")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop a capability")
def test_without_cap_ipc_lock_under_a_memlock_limit_the_key_pages_are_marked_dontdump() -> None:
    """Without CAP_IPC_LOCK (dropped by setpriv) and under a finite RLIMIT_MEMLOCK,
    nothing is locked (a later allocation could fail), and the key buffer's page is
    marked `dd` (left out of dumps)."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))

    setpriv = str(shutil.which("setpriv"))
    seen = _probe(
        setpriv, "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--", preexec_fn=limited
    )
    assert seen["applied"] == "madvise_dontdump"
    assert seen["locked_kb"] == 0
    assert "dd" in seen["key_page_flags"]
