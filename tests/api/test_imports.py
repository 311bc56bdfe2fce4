"""The API's layer: it checks the schema head without the migrator or Alembic."""

from __future__ import annotations

import subprocess
import sys


def test_the_api_imports_neither_the_migrator_nor_alembic():
    probe = (
        "import sys, danube_api.main; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'danube_migrator')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_api_imports_jinja2_at_its_first_page_not_at_start():
    probe = "import sys, danube_api.main; print('jinja2' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
