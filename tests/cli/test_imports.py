"""What `danube up` imports before it starts supervisord: only what that needs, since
every module imported there delays the whole stack's start (DESIGN 10, `startup`)."""

from __future__ import annotations

import json
import subprocess
import sys

# The modules `danube up` runs before supervisord is spawned: the command line, the
# home, the key, and the supervisord launcher.
_BEFORE_SUPERVISORD = "danube_cli.main, danube_cli.up, danube_keyd.keyfile"


def loaded_packages(modules: str, packages: tuple[str, ...]) -> list[str]:
    """The packages among `packages` that importing `modules` loads, in a new interpreter."""
    probe = (
        f"import json, sys, {modules}; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(packages)!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def test_danube_up_starts_supervisord_without_the_database_layer_or_logging():
    assert loaded_packages(_BEFORE_SUPERVISORD, ("sqlalchemy", "alembic", "structlog")) == []


def test_danube_up_imports_supervisors_client_only_after_spawning_it():
    assert loaded_packages(_BEFORE_SUPERVISORD, ("supervisor", "xmlrpc")) == []
