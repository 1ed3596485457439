"""The worker's memory at rest and at full load, measured once at start.

`watchdog.memory_limit_mb = "auto"` derives each worker's limit from these two numbers,
so the limit follows the model: the embedded 2-layer model and StructBERT-base differ by
an order of magnitude, and a fixed limit sized for one either kills the other or misses a
leak. After the model loaded and passed its known-answer probe, and before the worker
says ready, `measure` records `ready_mb`, then runs the heaviest work the worker can be
given (primary.max_batch_size texts of primary.sequence_length tokens each, on every lane
at once: the largest batch at the longest sequence, concurrently) and records `peak_mb`.

Memory is `sentiguard.runtime.memory.sample(pid).used_mb` (USS of the process tree, else
RSS), the watchdog's own measure. The peak is the highest of samples taken while the
batches run and one after: glibc returns large freed blocks to the kernel at once, so
the figure after the batch alone can miss what the batch held. It also warms the
allocator, so the first real full batch does not pay for it.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sentiguard.runtime import memory

if TYPE_CHECKING:
    from sentiguard.primary.batcher import Batcher

# A CJK character is one token in every Chinese BERT vocabulary (their tokenizers split
# CJK text per character), and this one is in all of them.
FILLER = "好"
# Sampling period while the full-load batches run. A sample reads /proc/PID/smaps (~17 ms
# of CPU for a torch process, measured on a loaded 2-core machine), so sampling faster
# would take a core from the batches it measures; the sample after them catches the rest.
SAMPLE_EVERY_S = 0.05
# Longest the full-load batches may take: seconds on a base-size model on two cores;
# past this something is wrong and the worker starts without a measure.
MEASURE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Footprint:
    """Memory of this worker's process tree before and during its heaviest work."""

    ready_mb: float
    peak_mb: float
    batch: int  # texts in each full-load batch (primary.max_batch_size)
    tokens: int  # tokens in each text, special tokens included (primary.sequence_length)
    lanes: int  # batches run at once
    measure_ms: float

    def as_json(self) -> dict[str, Any]:
        """The `memory` object of /live."""
        return {
            "ready_mb": self.ready_mb,
            "peak_mb": self.peak_mb,
            "batch": self.batch,
            "tokens": self.tokens,
            "lanes": self.lanes,
        }


def full_length_text(tokenizer: Any, sequence_length: int) -> str:
    """A text that fills `sequence_length` tokens once the model's special tokens are
    added, and not one more: longer would be windowed (primary.long_text = window) and
    cost more than the longest real input."""
    specials = int(tokenizer.num_special_tokens_to_add()) if tokenizer is not None else 2
    return FILLER * max(1, sequence_length - specials)


def used_mb() -> float:
    sample = memory.sample(os.getpid())
    assert sample is not None  # our own process exists
    return sample.used_mb


class _PeakSampler:
    """Samples this process tree's memory in a thread until stopped; keeps the highest."""

    def __init__(self, start_mb: float) -> None:
        self.peak_mb = start_mb
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="footprint", daemon=True)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, used_mb())

    def _run(self) -> None:
        while not self._done.wait(SAMPLE_EVERY_S):
            self.peak_mb = max(self.peak_mb, used_mb())


def measure(
    batcher: Batcher[Any], tokenizer: Any, max_batch_size: int, sequence_length: int
) -> Footprint:
    """Run one full-load batch on every lane of `batcher` at once; return the footprint.

    The batches go through the batcher as urgent requests (never dropped, ahead of any
    queue), so they are the real path and count in its progress: `batch_ms_max` starts
    out as the full-load batch time, which the watchdog's windows scale from. Raises what
    the batches raise.
    """
    started = time.perf_counter()
    texts = [full_length_text(tokenizer, sequence_length)] * max_batch_size
    ready_mb = used_mb()
    lanes = batcher.lanes
    with _PeakSampler(ready_mb) as sampler, ThreadPoolExecutor(lanes) as pool:
        # One request of max_batch_size texts fills a batch, so each lane takes one.
        runs = [pool.submit(batcher.submit, texts, MEASURE_TIMEOUT_S, True) for _ in range(lanes)]
        for run in runs:
            run.result()
    return Footprint(
        ready_mb=ready_mb,
        peak_mb=round(sampler.peak_mb, 1),
        batch=max_batch_size,
        tokens=sequence_length,
        lanes=lanes,
        measure_ms=round((time.perf_counter() - started) * 1000, 1),
    )
