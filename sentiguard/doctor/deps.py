"""Python, the pinned dependencies (requirements.lock) and whether they import."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from sentiguard.doctor.report import Result, Status, fail, ok, warn
from sentiguard.settings import ROOT

MIN_PYTHON = (3, 11)
LOCK_FILE = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
INSTALL_FIX = "pip install -r requirements.lock (or `make install`)"

# What the service imports at run time; a version match does not prove a wheel imports
# (a missing system library, an ABI mismatch), so doctor imports each one.
RUNTIME_MODULES: tuple[str, ...] = (
    "torch",
    "transformers",
    "modelscope",
    "sklearn",
    "jieba",
    "rjieba",
    "flask",
    "waitress",
    "supervisor",
    "psutil",
    "prometheus_client",
)


# --- python and dependencies ------------------------------------------------------------


def check_python(version: Sequence[int] = tuple(sys.version_info[:3])) -> Result:
    shown = ".".join(map(str, version))
    need = ".".join(map(str, MIN_PYTHON))
    if tuple(version[:2]) >= MIN_PYTHON:
        return ok("python", f"{shown} (needs >= {need})")
    return fail(
        "python", f"{shown} is too old (needs >= {need})", f"recreate .venv with python{need}"
    )


def read_requirements_lock(path: Path) -> dict[str, str]:
    """Exact pins `name==version` of a lock file, by canonical name; other lines ignored."""
    pins: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def declared_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The runtime requirements: pyproject.toml's (a source checkout) else the installed
    metadata's. An editable install's metadata goes stale when pyproject changes."""
    if pyproject.is_file():
        with pyproject.open("rb") as f:
            return list(tomllib.load(f)["project"]["dependencies"])
    try:
        return importlib.metadata.requires("sentiguard") or []
    except importlib.metadata.PackageNotFoundError:
        return []


def runtime_closure(requirements: Iterable[str]) -> set[str]:
    """Canonical names of the requirements and, through installed metadata, theirs."""
    env = {k: str(v) for k, v in default_environment().items()} | {"extra": ""}
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        try:
            req = Requirement(todo.pop())
        except InvalidRequirement:
            continue
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        seen.add(name)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            todo.extend(importlib.metadata.requires(req.name) or [])
    return seen


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def check_dependencies(
    lock: Path = LOCK_FILE,
    runtime: set[str] | None = None,
    installed: Callable[[str], str | None] = _installed_version,
) -> list[Result]:
    """Every pin of `lock` installed at exactly its version (importlib.metadata).

    `runtime` holds the canonical names the service needs (default: the closure of the
    declared dependencies); a missing or wrong runtime package is FAIL. The rest of the
    lock is the dev tooling (pytest, ruff, ...): a production image may leave it out, so
    missing is fine and a wrong version is only WARN.
    """
    try:
        pins = read_requirements_lock(lock)
    except OSError as e:
        return [fail("dependencies", f"cannot read {lock}: {e}", "restore it from git")]
    if runtime is None:
        runtime = runtime_closure(declared_requirements())
    results: list[Result] = []
    dev_missing = 0
    for name, want in sorted(pins.items()):
        have = installed(name)
        needed = name in runtime
        if have is None:
            if needed:
                results.append(fail(name, f"not installed (lock pins {want})", f"{INSTALL_FIX}"))
            else:
                dev_missing += 1
        elif not _same_version(have, want):
            make = fail if needed else warn
            results.append(
                make(
                    name,
                    f"{have} installed, {lock.name} pins {want}",
                    f"pip install '{name}=={want}' (or {INSTALL_FIX})",
                )
            )
    if not any(r.status is Status.FAIL for r in results):
        note = f"; {dev_missing} dev-only pins not installed" if dev_missing else ""
        results.insert(0, ok("dependencies", f"{len(pins)} pins of {lock.name} match{note}"))
    return results


def check_imports(modules: Sequence[str] = RUNTIME_MODULES) -> list[Result]:
    """Import each module for real; the slow ones (torch, transformers) dominate doctor's time."""
    results: list[Result] = []
    start = time.perf_counter()
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:  # any import-time failure is the finding, not a crash
            results.append(fail(f"import {module}", f"{type(e).__name__}: {e}", f"{INSTALL_FIX}"))
    if not results:
        took = time.perf_counter() - start
        results.append(ok("imports", f"{len(modules)} runtime modules import ({took:.1f} s)"))
    return results
