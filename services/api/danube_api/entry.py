"""`danube-api`'s entry point: the API is imported with the garbage collector paused.

Importing the API makes about 180,000 objects that live as long as the process (modules,
routes, their schemas). With the collector on, Python walked them in several collections
during the import, and once more before freezing them, for about 800 objects of garbage:
about 0.13 s of CPU on the way to ready, on cores the migrator and keyd share at start.
`danube_api.main.main` freezes what the import made and turns the collector back on
before it serves.
"""

from __future__ import annotations

import gc


def main() -> int:
    gc.disable()
    # Imported here, with the collector paused: this module's reason to exist.
    from danube_api.main import main as run_api

    return run_api()
