"""The checks a setting's value must pass: each returns None, or what is wrong with it
in words the loader puts after the setting's name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Validator = Callable[[Any], str | None]


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def tcp_port(value: Any) -> str | None:
    return None if 1 <= value <= 65535 else "must be a TCP port between 1 and 65535"


def niceness(value: Any) -> str | None:
    return None if 0 <= value <= 19 else "must be between 0 and 19"


def mb_or_auto(value: Any) -> str | None:
    if value == "auto" or (isinstance(value, int) and value > 0):
        return None
    return 'must be a number of MB greater than 0, or "auto"'


def one_of(*choices: str) -> Validator:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check
