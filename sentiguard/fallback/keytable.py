"""A read-only hash table from uint64 keys to columns, looked up a whole array at a time.

`np.searchsorted` over a sorted key array costs ~18 dependent cache misses per key when
the queries come unsorted, which made it the largest numpy step of the fallback's
feature extraction. Open addressing with linear probing at load factor <= 0.5 needs
about 1.3 probes per key, each probe one vectorised gather over the keys still unresolved.

Built without a Python loop: keys are placed in the order of their home slots, each at
max(home, previous place + 1) (a running maximum), which is exactly where sequential
linear-probing inserts in that order would put them. Probes never wrap around; the
table has a tail long enough for the last run plus one empty slot that ends every probe.
Key 0 marks an empty slot, so 0 is not a valid key (feature keys never are: see
`features.py`).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads nearby keys apart


class KeyTable:
    """Maps each of `keys` (distinct, non-zero uint64) to its position in `keys`."""

    def __init__(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.uint64)
        if keys.size and (keys == 0).any():
            raise ValueError("0 is reserved for empty slots")
        self.size = int(keys.size)
        self.bits = max(4, int(2 * max(self.size, 1) - 1).bit_length())  # load <= 0.5
        home = self._hash(keys)
        order = np.argsort(home, kind="stable")
        rank = np.arange(self.size)
        # place_i = max(home_i, place_{i-1} + 1)  <=>  place_i - i = running max of home_i - i
        place = np.maximum.accumulate(home[order] - rank) + rank if self.size else rank
        length = max(1 << self.bits, int(place[-1]) + 1 if self.size else 0) + 1
        self.slot_keys = np.zeros(length, np.uint64)
        self.slot_values = np.full(length, -1, np.int64)
        self.slot_keys[place] = keys[order]
        self.slot_values[place] = order

    def _hash(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # multiplication mod 2**64 is the point
            product = keys * _GOLDEN
        return (product >> np.uint64(64 - self.bits)).astype(np.int64)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The position of each key in the constructor's array, or -1 when absent."""
        keys = np.asarray(keys, dtype=np.uint64)
        result = np.full(keys.size, -1, np.int64)
        if not self.size or not keys.size:
            return result
        pending = np.arange(keys.size)
        slot = self._hash(keys)
        while pending.size:
            found = self.slot_keys[slot]
            hit = found == keys[pending]
            result[pending[hit]] = self.slot_values[slot[hit]]
            more = ~hit & (found != 0)  # an empty slot ends the probe: absent
            pending, slot = pending[more], slot[more] + 1
        return result
