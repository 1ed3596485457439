"""One `primary.precision = auto` choice for every worker of a service run.

Each worker could measure for itself, but timings at start are noisy (the other workers
start at the same moment), and where two candidates run close, workers would split
between them: /status would show two model versions, and `sentiguard reload`, which waits
for every worker to serve the version the first one came back with, would time out. So
the first worker to get here measures, under an exclusive flock of `<record>.lock`, and
records its report in `<run_dir>/precision.json`; the others wait for it (one measurement,
seconds) and serve the same choice, and so does every restart during this `up`.

The record is keyed by what the choice depends on: the model's weights, the batch size
measured, torch's threads and version, the CPU's flags, and the `up` (its service.json),
so a new `up`, model, machine or setting measures afresh. A record that cannot be read or
written is no error: the worker measures and serves its own choice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from sentiguard.runtime.paths import write_atomic


def key(weights_version: str, batch: int, flags: Iterable[str], service_record: Path | None) -> str:
    """The record's key for a choice: what would make another measurement differ."""
    import torch

    up = ""
    if service_record is not None:
        with contextlib.suppress(OSError):
            up = hashlib.sha256(service_record.read_bytes()).hexdigest()[:12]
    parts = [
        weights_version,
        f"batch {batch}",
        f"threads {torch.get_num_threads()}",
        f"torch {torch.__version__}",
        "flags " + ",".join(sorted(flags)),
        f"up {up or '-'}",
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def shared(path: Path, record_key: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The report recorded under `record_key`, else `measure()` recorded there.

    A reused report says so: `"reused": true` and the pid of the worker that measured."""
    with _locked(path.with_name(path.name + ".lock")) as locked:
        records = _read(path) if locked else {}
        saved = records.get(record_key)
        if isinstance(saved, dict) and isinstance(saved.get("report"), dict):
            return {**saved["report"], "reused": True, "measured_by_pid": saved.get("pid")}
        report = measure()
        if locked:  # only the latest: another key is another up, model or machine
            _write(path, {record_key: {"report": report, "pid": os.getpid(), "ts": time.time()}})
        return report


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[bool]:
    """Hold an exclusive flock of `lock` (released with the file); False when it cannot
    be opened, e.g. no run directory: then this worker measures alone."""
    try:
        f = lock.open("a")
    except OSError:
        yield False
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield True


def _read(path: Path) -> dict[str, Any]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _write(path: Path, records: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        write_atomic(path, json.dumps(records, indent=1, sort_keys=True) + "\n")
