"""The functions longer than a limit (60 lines) outside tests/ and bench/, longest first:
`python tools/long_functions.py [LIMIT]`. Exit status 1 if there is any."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SKIP = ("tests/", "bench/")


def long_functions(root: Path, limit: int) -> list[tuple[int, str]]:
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.split()
    out = []
    for f in files:
        if f.startswith(SKIP) or not (root / f).exists():
            continue
        for node in ast.walk(ast.parse((root / f).read_text(), f)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > limit:
                    out.append((n, f"{f}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def main() -> int:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    rows = long_functions(Path.cwd(), limit)
    for n, where in rows:
        print(f"{n:4} {where}")
    print(f"{len(rows)} functions longer than {limit} lines")
    return 1 if rows else 0


if __name__ == "__main__":
    sys.exit(main())
