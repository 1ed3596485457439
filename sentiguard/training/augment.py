"""Extra inputs for distillation: copies of training texts that the teacher labels.

Each copy keeps its source's index, so its soft label can come from the fold model that
never saw the source (`teacher.teacher_probabilities`), and its hard label is the source's.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

from sentiguard.fallback.tokenizer import segment

CLAUSE_END = re.compile(r"(?<=[，。！？；,.!?;~～…\s])")


def make_crops(texts: Sequence[str], copies: int, seed: int) -> list[tuple[int, str]]:
    """(source index, crop) pairs: each crop keeps a random run of >= half the clauses."""
    rng = random.Random(seed)
    crops: list[tuple[int, str]] = []
    for index, text in enumerate(texts):
        clauses = [c for c in CLAUSE_END.split(text) if c.strip()]
        if len(clauses) < 2:
            continue
        for _ in range(copies):
            size = rng.randint(math.ceil(len(clauses) / 2), len(clauses) - 1)
            start = rng.randint(0, len(clauses) - size)
            crops.append((index, "".join(clauses[start : start + size]).strip()))
    return crops


def make_word_drops(
    texts: Sequence[str], copies: int, rate: float, seed: int
) -> list[tuple[int, str]]:
    """(source index, copy) pairs: each copy leaves out each word with probability
    `rate`, and at least one word; whitespace stays."""
    rng = random.Random(seed)
    drops: list[tuple[int, str]] = []
    for index, text in enumerate(texts):
        pieces = segment(text)
        words = [i for i, w in enumerate(pieces) if not w.isspace()]
        if len(words) < 3:
            continue
        for _ in range(copies):
            gone = {i for i in words if rng.random() < rate} or {rng.choice(words)}
            if len(gone) < len(words):
                drops.append((index, "".join(w for i, w in enumerate(pieces) if i not in gone)))
    return drops
