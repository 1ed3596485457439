"""`sentiguard doctor`: check an install before (or while) it runs.

Each check returns `Result`s; `doctor_command` prints one line per result,

    PASS  python        3.11.7 (needs >= 3.11)
    FAIL  gateway port  127.0.0.1:5000 is taken by pid 4242 (nginx) -> fix: stop it, or ...

and exits non-zero when any line is FAIL. WARN marks something that works but deserves a
look (a stale socket file supervisord will replace, a thin memory margin). Every FAIL and
WARN line names its fix, so the operator never has to guess the next step.

Checks take their inputs as parameters (the lock file, the modules to import, the memory
figures) so tests can point them at temporary copies; `run_checks(settings)` wires in the
real ones. The checks live by subject: deps (python, the lock, imports), config (how
settings fit together), ports (what already runs), models (files and hashes), resources
(memory, directories), service (the running one, found like every command finds it:
`runtime.locate`, so a service started with `up --port P` is checked on P).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from sentiguard.doctor.config import check_settings
from sentiguard.doctor.deps import (
    LOCK_FILE,
    RUNTIME_MODULES,
    check_dependencies,
    check_imports,
    check_python,
)
from sentiguard.doctor.models import check_models
from sentiguard.doctor.ports import check_ports, check_supervisor_socket
from sentiguard.doctor.report import Result, Status
from sentiguard.doctor.resources import check_memory, check_writable
from sentiguard.doctor.service import check_service
from sentiguard.runtime.locate import Target, locate
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings

__all__ = ["Result", "Status", "doctor_command", "run_checks"]


def run_checks(
    settings: Settings,
    *,
    lock: Path = LOCK_FILE,
    modules: Sequence[str] = RUNTIME_MODULES,
    available_mb: float | None = None,
    target: Target | None = None,
) -> Iterator[Result]:
    """Every check, in the order an operator fixes things: runtime, config, host, models,
    then the running service. `target` (default: `locate(settings)`) says where it runs."""
    target = target if target is not None else locate(settings)
    settings = target.settings
    yield check_python()
    yield from check_dependencies(lock)
    yield from check_imports(modules)
    yield from check_settings(settings)
    yield from check_ports(settings)
    yield check_supervisor_socket(settings)
    yield from check_models(settings)
    yield check_memory(settings, available_mb)
    yield check_writable("log dir", RunDir(settings).logs, "service.log_dir")
    yield check_writable("run dir", RunDir(settings).root, "service.run_dir")
    yield check_service(target)


def doctor_command(
    settings: Settings,
    *,
    lock: Path = LOCK_FILE,
    modules: Sequence[str] = RUNTIME_MODULES,
    available_mb: float | None = None,
    out: IO[str] | None = None,
    target: Target | None = None,
) -> int:
    """Print one line per result as it is found; 1 when any line is FAIL, else 0."""
    out = out if out is not None else sys.stdout
    counts = dict.fromkeys(Status, 0)
    checks = run_checks(
        settings, lock=lock, modules=modules, available_mb=available_mb, target=target
    )
    for result in checks:
        counts[result.status] += 1
        print(result.line(), file=out, flush=True)
    summary = ", ".join(f"{n} {s.value.lower()}" for s, n in counts.items())
    print(f"doctor: {summary}", file=out)
    return 1 if counts[Status.FAIL] else 0
