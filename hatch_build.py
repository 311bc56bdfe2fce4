"""Compile Danube's own modules when the project is installed editable (as `uv sync` does).

uv's `compile-bytecode` compiles site-packages, but an editable install leaves Danube's
modules in the source tree, and with `PYTHONDONTWRITEBYTECODE=1` Python never caches them:
every program then recompiled every module of Danube at every start. This hook writes the
`__pycache__` files once, at install. A module edited afterwards is recompiled in memory
at each start until the next install (timestamp pycs: never stale in behaviour, only slower).
"""

from __future__ import annotations

import compileall
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CompileEditableSources(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        # A regular wheel is compiled by the installer (uv's compile-bytecode); only the
        # editable one points at sources no installer compiles.
        if version != "editable":
            return
        for package in self.build_config.packages:
            compileall.compile_dir(Path(self.root) / package, quiet=1)
