"""The codebase's own rules (CONTRIBUTING, "Style"), checked on the source: short functions in `trl/agents`, no
`sys.path` edits, benchmarks independent of `tests/`. Complexity is ruff's (`C90` in ruff.toml)."""

from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
SOURCES = ["trl", "examples", "benchmarks", "tests", "scripts"]


def python_files(*folders: str):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "toy_data" not in path.parts:  # the toy repositories are task data, not project code
                yield path


def test_functions_in_the_library_are_short_or_say_why():
    """Over MAX_LINES lines only with a `# long: <why>` comment on the line after the signature."""
    long = []
    for path in python_files("trl"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                body_start = node.body[0].lineno - 1
                if length > MAX_LINES and "# long:" not in " ".join(lines[node.lineno - 1 : body_start + 1]):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "functions over 60 lines without a '# long:' reason:\n" + "\n".join(long)


def test_nothing_edits_sys_path():
    edits = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in python_files(*SOURCES)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys"
    ]
    assert not edits, f"sys.path is used (import through packages instead): {edits}"


def test_benchmarks_import_nothing_from_tests():
    offenders = []
    for path in python_files("benchmarks"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("tests", "conftest")]
    assert not offenders, offenders
