"""The shape of the package: no import cycle, no oversized module, no copies of the
runtime's one implementations, bench/ importing only the package."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sentiguard"
MAX_LINES = 450


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(path: Path, name: str, known: dict[str, Path]) -> Iterator[str]:
    """Every sentiguard module `path` imports anywhere in its body (function-local imports
    count; `if TYPE_CHECKING:` blocks do not run, so they do not)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import sub` imports pkg.sub; `from pkg import name` imports pkg
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # importing a.b.c runs a and a.b first: count the innermost module only, the
            # package __init__ files are checked as modules of their own
            if target and target != name:
                yield target


def test_no_import_cycle() -> None:
    known = modules()
    graph = {name: set(imported(path, name, known)) for name, path in known.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # A package importing its own submodule in __init__ is not a cycle of behaviour, but
    # a submodule importing its package back would be: both count.
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_the_size_limit() -> None:
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()
    }
    large = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not large, f"modules over {MAX_LINES} lines (split them by concept): {large}"


def test_bench_imports_only_the_package() -> None:
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "tests", f"{path.name}: {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] != "tests", f"{path.name}: {alias.name}"


# Spellings that belong to one module each (DESIGN.md's runtime): a second copy drifts.
ONE_HOME = {
    r'/ "(supervisor\.sock|control\.sock|reload\.lock|watchdog_restarts\.json|primary_model'
    r"|watchdog\.jsonl|secret|service\.json"
    r'|supervisord\.(conf|pid))"': "sentiguard/runtime/paths.py",
    r"def is_loopback|def _is_loopback|is_loopback = ": "sentiguard/runtime/net.py",
    r"\.bind\(\(": "sentiguard/runtime/net.py",
    r'f"primary_\{|\w\.primary\.base_port \+': "sentiguard/runtime/endpoints.py",
    r"def library_versions": "",
    r"class ServiceError": "sentiguard/errors.py",
    r"urllib\.request": "",
    r"os\.replace\(": "",
}


def test_each_runtime_concern_is_written_once() -> None:
    for pattern, home in ONE_HOME.items():
        where = sorted(
            str(p.relative_to(ROOT))
            for p in PACKAGE.rglob("*.py")
            if re.search(pattern, p.read_text(encoding="utf-8"))
        )
        if home:
            assert where == [home], f"{pattern!r} belongs in {home} only, found in {where}"
        else:
            assert len(where) <= 1, f"{pattern!r} is written more than once: {where}"
