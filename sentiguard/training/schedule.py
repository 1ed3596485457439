"""The learning-rate schedule and the progress bar of every training loop here (fine-tuning
in `student`, masked-LM pretraining in `pretrain`)."""

from __future__ import annotations

import math
import sys
from typing import Any


def warmup_cosine(optimizer: Any, total: int, warmup_fraction: float) -> Any:
    """A scheduler for `total` steps: linear warm-up over `warmup_fraction`, then cosine to
    zero."""
    import torch

    warmup = max(1, int(total * warmup_fraction))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)


def progress(total: int, desc: str) -> Any:
    """The training progress bar (steps, loss, ETA) on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, smoothing=0.05, mininterval=1)
