"""Issue 10's deadline abuse, on the real service: short-deadline clients cost the others
nothing.

2 normal clients alone, then beside 4 clients sending `X-Deadline-Ms: 60` (above the
floor, below anything the primary plus the fallback's reserve can meet). Measured before
the change: the normal clients' primary share fell from 100 % to 24 % and both breakers
opened, because each short-deadline timeout counted as the worker's failure. Held here as
ratios of the same run (share beside / share alone), never as times.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sentiguard.chaos import capacity
from sentiguard.chaos.service import start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_short_deadline_clients_leave_normal_clients_primary_share_and_breakers(
    tmp_path: Path,
) -> None:
    service = start_service(tmp_path, workers=2, faults=False)
    try:
        result = capacity.deadline_abuse(service, normal=2, abusive=4, deadline_ms=60, seconds=8)
    finally:
        service.stop()
    extra = result.extra
    print("deadline_abuse", extra)  # the numbers behind a pass, for `pytest -s`
    assert extra["normal_primary_share_alone"], extra
    assert extra["share_ratio"] is not None and extra["share_ratio"] >= 0.9, extra
    assert set(extra["breakers_after"].values()) == {"closed"}, extra
    assert result.failures == [], extra
    # The short-deadline clients got answers (fallback, at once), not errors.
    assert set(extra["abusive_statuses"]) == {200}, extra
