"""CONVENTIONS 18: test directories share helpers through tests/support/, never by
importing another directory's conftest.py (a conftest holds its own directory's fixtures;
importing it from elsewhere ties two suites together behind pytest's back)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
SCANNED = (REPOSITORY / "tests", REPOSITORY / "benchmarks")


def conftest_imports() -> Iterator[tuple[Path, str]]:
    """Every (file, module) where a Python file under tests/ or benchmarks/ imports a
    conftest module, in any form (`from X.conftest import`, `import X.conftest`,
    `from X import conftest`)."""
    for root in SCANNED:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules = [node.module] + [
                        f"{node.module}.{alias.name}" for alias in node.names
                    ]
                else:
                    continue
                for module in modules:
                    if module.split(".")[-1] == "conftest":
                        yield path, module


def package_of(path: Path) -> str:
    return ".".join(path.parent.relative_to(REPOSITORY).parts)


def test_no_file_imports_another_directorys_conftest():
    crossing = [
        f"{path.relative_to(REPOSITORY)} imports {module}"
        for path, module in conftest_imports()
        if module.rpartition(".")[0] != package_of(path)
    ]
    assert crossing == [], "share it through tests/support/ instead:\n" + "\n".join(crossing)


def test_the_scan_sees_a_conftest_import_in_its_own_directory():
    """Keeps the test above honest: the scan does find conftest imports when there are
    some (tests/api's test files import tests/api/conftest.py)."""
    found = {
        (path.relative_to(REPOSITORY).as_posix(), module) for path, module in conftest_imports()
    }
    assert ("tests/api/test_jobs.py", "tests.api.conftest") in found
