"""The one place a probability becomes the API's label fields."""

from __future__ import annotations

from typing import Any

LABELS_ZH = {"positive": "正面", "negative": "负面"}


def label_fields(p_positive: float) -> dict[str, Any]:
    """`label`, `label_zh`, `score` (probability of the label) and `scores` for one text."""
    p = min(max(float(p_positive), 0.0), 1.0)
    label = "positive" if p >= 0.5 else "negative"
    return {
        "label": label,
        "label_zh": LABELS_ZH[label],
        "score": round(p if label == "positive" else 1.0 - p, 6),
        "scores": {"positive": round(p, 6), "negative": round(1.0 - p, 6)},
    }
