"""Every module zdagent imports, anywhere (function-level imports too), is the standard
library, zdagent itself, or a dependency declared in pyproject.toml: the production install is
`pip install .` with no extras, so an undeclared import is a crash there (it was: click)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# distribution name -> the module it provides, where they differ
IMPORT_NAMES: dict[str, str] = {}


def declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\\[; ]", d, maxsplit=1)[0].strip().lower() for d in deps}
    return {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in names}


def imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_import_is_declared():
    allowed = set(sys.stdlib_module_names) | {"zdagent"} | declared()
    undeclared = {f"{path.relative_to(ROOT)}: {name}"
                  for path in sorted((ROOT / "zdagent").rglob("*.py"))
                  for name in imported(path) if name not in allowed}
    assert not undeclared, f"imported but not in pyproject dependencies: {sorted(undeclared)}"


def test_the_check_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def gate():\n    import click\n    from yaml import safe_load\n")
    assert imported(f) == {"click", "yaml"}
