"""One job per function (issue 16): no function or method of exports_pipeline/ is longer than 60 lines,
from its `def` line to its last line (docstring and comments included). Plain parsing, no database."""

from __future__ import annotations

import ast
from pathlib import Path

import exports_pipeline

MAX_LINES = 60
PACKAGE = Path(exports_pipeline.__file__).resolve().parent


def _long_functions(source: str, module: str) -> list[str]:
    """Each function or method of the source longer than MAX_LINES, as 'module:line name (N lines)'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                found.append(f"{module}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_the_check_finds_a_long_function_and_passes_a_short_one():
    def body(indent: str, lines: int) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(lines))

    assert _long_functions(f"def short():\n{body('    ', MAX_LINES - 1)}", "m.py") == []
    assert _long_functions(f"class C:\n    def long(self):\n{body('        ', MAX_LINES)}", "m.py") == [
        f"m.py:2 long ({MAX_LINES + 1} lines)"
    ]


def test_no_function_is_longer_than_60_lines():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20  # the package itself, not an empty folder
    too_long = [
        found
        for path in modules
        for found in _long_functions(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    ]
    assert not too_long, "functions longer than 60 lines (split them into named steps):\n" + "\n".join(too_long)
