"""`danube-api`'s entry point: the API is imported with the garbage collector paused, and
without `rich`.

Importing the API makes about 180,000 objects that live as long as the process (modules,
routes, their schemas). With the collector on, Python walked them in several collections
during the import, and once more before freezing them, for about 800 objects of garbage:
about 0.13 s of CPU on the way to ready, on cores the migrator and keyd share at start.
`danube_api.main.main` freezes what the import made and turns the collector back on
before it serves.

structlog imports `rich`, whenever it is installed, for its console tracebacks; a checkout
has it through the development tools (schemathesis, import-linter), a host install does
not. The API never uses it (its lines are JSON; with `log.format = "console"` a traceback
is printed plainly), and importing it was 4% of the API's import (callgrind: 3.38 billion
instructions with it, 3.24 without).
"""

from __future__ import annotations

import gc
import sys


def main() -> int:
    gc.disable()
    # A module that is None in sys.modules is one `import` reports missing.
    sys.modules.setdefault("rich", None)  # pyright: ignore[reportArgumentType] -- None is how the import system marks a module absent
    # Imported here, with the collector paused: this module's reason to exist.
    from danube_api.main import main as run_api

    return run_api()
