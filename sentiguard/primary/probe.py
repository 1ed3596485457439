"""The known-answer texts: the one set readiness and the watchdog's correctness check use.

One clearly positive and one clearly negative review. Both must land on their side of
0.5, so a model stuck on one answer fails too. A worker runs them through its real
batched path at start (ready only once they pass) and on every GET /health, which is what
the watchdog's probe asks for.
"""

from __future__ import annotations

from collections.abc import Sequence

PROBE: tuple[tuple[str, bool], ...] = (
    ("这个手机非常好用，质量很好，我很满意，推荐购买！", True),
    ("质量太差了，用了两天就坏了，客服也不理人，非常失望。", False),
)
TEXTS = [text for text, _ in PROBE]


def passed(p_positive: Sequence[float]) -> bool:
    """Whether the answers to `TEXTS`, in order, are each on the right side of 0.5."""
    return len(p_positive) == len(PROBE) and all(
        (p >= 0.5) == positive for p, (_, positive) in zip(p_positive, PROBE, strict=True)
    )
