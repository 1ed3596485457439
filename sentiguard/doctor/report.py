"""One line of the doctor's report: a check's name, PASS/WARN/FAIL, what it found, the fix."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Result:
    """One line of the report. `fix` is required for WARN and FAIL."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value}  {self.check:<16} {self.detail}"
        return f"{text} -> fix: {self.fix}" if self.fix else text


def ok(check: str, detail: str) -> Result:
    return Result(check, Status.PASS, detail)


def warn(check: str, detail: str, fix: str) -> Result:
    return Result(check, Status.WARN, detail, fix)


def fail(check: str, detail: str, fix: str) -> Result:
    return Result(check, Status.FAIL, detail, fix)
