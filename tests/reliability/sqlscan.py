"""A static check of every SQL statement in a Python package, for the injection test.

It reads the source with `ast` (a grep that understands code) and follows each statement given
to `execute`/`executemany`/`copy`/`stream` back through local and module-level assignments. It
reports two things:

- text formatting in SQL: an f-string, `%` formatting, `str.format` or `+` with a non-constant
  anywhere in the SQL text (values inside `sql.Literal`/`sql.Identifier` are data, not SQL);
- a statement that composes a variable name (`sql.Identifier(variable)`) AND passes client-side
  parameters: psycopg does not escape `%` inside identifiers, so a name like `a%(q)s` would be
  rewritten into `a$1` (another table) or break the statement.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

SINKS = {"execute", "executemany", "copy", "stream"}
VALUE_WRAPPERS = {"Literal", "Identifier", "Placeholder"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    code: str

    def render(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.code}"


@dataclass
class Scan:
    statements: int = 0
    findings: list[Finding] = field(default_factory=list)


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute):
            return func.attr
        if isinstance(func, ast.Name):
            return func.id
    return None


class _Module:
    def __init__(self, tree: ast.Module, path: str, source: str) -> None:
        self.path = path
        self.source = source
        self.constants: set[str] = set()
        self.globals: dict[str, list[ast.expr]] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        self.globals.setdefault(target.id, []).append(node.value)
                        if isinstance(node.value, ast.Constant):
                            self.constants.add(target.id)

    def is_constant(self, node: ast.expr, local: dict[str, list[ast.expr]]) -> bool:
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.Name):
            if node.id in local:
                return all(self.is_constant(v, {}) for v in local[node.id])
            return node.id in self.constants or node.id.isupper()
        return False


def _assignments(function: ast.AST) -> dict[str, list[ast.expr]]:
    found: dict[str, list[ast.expr]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(node.value)
        elif (isinstance(node, ast.AnnAssign) and node.value is not None
              and isinstance(node.target, ast.Name)):
            found.setdefault(node.target.id, []).append(node.value)
    return found


def _is_str(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _problems(module: _Module, node: ast.expr, local: dict[str, list[ast.expr]],
              seen: set[int], flags: dict[str, bool]) -> list[str]:
    """Formatting problems in the SQL text `node`; sets flags['variable_name']."""
    if id(node) in seen:
        return []
    seen.add(id(node))
    name = _call_name(node)
    if name in VALUE_WRAPPERS:
        assert isinstance(node, ast.Call)
        if name == "Identifier" and not all(module.is_constant(a, local) for a in node.args):
            flags["variable_name"] = True
        return []
    problems: list[str] = []
    if isinstance(node, ast.JoinedStr):
        problems.append("f-string in SQL")
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and (
            _is_str(node.left) or isinstance(node.left, ast.JoinedStr)):
        problems.append("%-formatted SQL")
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and not (
            _is_str(node.left) and _is_str(node.right)):
        if _is_str(node.left) or _is_str(node.right):
            problems.append("SQL built with +")
    elif (name == "format" and isinstance(node, ast.Call)
          and isinstance(node.func, ast.Attribute) and _is_str(node.func.value)):
        problems.append("str.format() in SQL")
    if isinstance(node, ast.Name):
        for value in local.get(node.id, []) or module.globals.get(node.id, []):
            problems += _problems(module, value, local, seen, flags)
        return problems
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.keyword):
            child = child.value
        if isinstance(child, ast.expr):
            problems += _problems(module, child, local, seen, flags)
    return problems


def scan_source(source: str, path: str) -> Scan:
    tree = ast.parse(source)
    module = _Module(tree, path, source)
    scan = Scan()
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.Lambda)]
    owner: dict[int, ast.AST] = {}
    for function in functions:
        for node in ast.walk(function):
            owner.setdefault(id(node), function)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        if not node.args or (name not in SINKS and name != "SQL"):
            continue
        statement = node.args[0]
        local = _assignments(owner.get(id(node), tree))
        flags = {"variable_name": False}
        problems = _problems(module, statement, local, set(), flags)
        code = ast.get_source_segment(source, node) or ""
        short = " ".join(code.split())[:160]
        if name in SINKS:
            scan.statements += 1
            has_params = len(node.args) > 1 or any(k.arg == "params" for k in node.keywords)
            if flags["variable_name"] and has_params:
                problems.append("a variable name composed into a statement with parameters")
        scan.findings += [Finding(path, node.lineno, rule, short) for rule in problems]
    return scan


def scan_package(root: Path) -> Scan:
    total = Scan()
    for path in sorted(root.rglob("*.py")):
        found = scan_source(path.read_text("utf-8"), path.relative_to(root.parent).as_posix())
        total.statements += found.statements
        total.findings += found.findings
    return total
