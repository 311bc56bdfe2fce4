"""keyd never imports the database or web stack (DESIGN invariant 1)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.support.isolation import program_environment
from tests.support.keyd import KeydHome

FORBIDDEN = ("sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn")

# Runs keyd's real main() in the child's main thread; a helper thread waits until both
# sockets exist, records every loaded module, and sends SIGTERM for a clean stop.
_PROBE = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from pathlib import Path

    import danube_keyd.main

    config, socket_dir = sys.argv[1], Path(sys.argv[2])
    loaded = []

    def probe():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (socket_dir / "keyd.sock").exists() and (socket_dir / "keyd-worker.sock").exists():
                break
            time.sleep(0.01)
        loaded.extend(sorted(sys.modules))
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=probe, daemon=True).start()
    code = danube_keyd.main.main(["--config", config])
    print(json.dumps({"exit": code, "modules": loaded}))
    """
)


def test_a_running_keyd_has_loaded_no_database_or_web_module(keyd_home: KeydHome) -> None:
    """After keyd's main() has bound its sockets, none of sqlalchemy, alembic, fastapi,
    starlette or uvicorn (nor a submodule) is in sys.modules."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(keyd_home.config_path), str(keyd_home.socket_dir)],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["exit"] == 0
    assert "danube_keyd.socket_server" in report["modules"]
    assert "zmq" in report["modules"]
    leaked = [name for name in report["modules"] if name.split(".")[0] in FORBIDDEN]
    assert leaked == []


def test_danube_keygen_path_imports_no_database_or_web_module() -> None:
    """`danube keygen`'s import of danube_keyd.keyfile pulls in none of them either."""
    script = "import sys, json, danube_cli.main, danube_keyd.keyfile; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    modules = json.loads(result.stdout)
    assert [name for name in modules if name.split(".")[0] in FORBIDDEN] == []
