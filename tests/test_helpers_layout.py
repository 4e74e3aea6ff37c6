"""Where test helpers live: shared helpers in tests/support/, fixtures in conftests, and no test module
importing a conftest (pytest loads conftests itself; importing one runs it twice under another name)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def test_no_test_module_imports_a_conftest() -> None:
    # Execute
    offenders = [
        f"{path.relative_to(TESTS.parent)} imports {module}"
        for path in sorted(TESTS.rglob("*.py"))
        for module in imported_modules(path)
        if module.split(".")[-1] == "conftest"
    ]

    # Assert
    assert offenders == [], "move the shared helper into tests/support/ and import it from there"


def test_support_depends_on_no_other_test_package() -> None:
    # Execute
    offenders = [
        f"{path.relative_to(TESTS.parent)} imports {module}"
        for path in sorted((TESTS / "support").rglob("*.py"))
        for module in imported_modules(path)
        if module.startswith("tests.") and not module.startswith(("tests.support", "tests.fixtures"))
    ]

    # Assert
    assert offenders == [], "tests/support/ is the bottom layer of the test helpers; keep it self-contained"
