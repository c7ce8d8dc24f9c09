"""Code a researcher can read in one sitting: no function in src/ longer than 100 lines."""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "rewardlab"


def test_no_function_is_longer_than_100_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, long
