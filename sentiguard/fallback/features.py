"""TF-IDF features of a review: word 1-2-grams and character 1-3-grams, vectorised.

scikit-learn's `TfidfVectorizer` builds every n-gram as a Python string and looks each up
in a dict: ~600 features per review, so word + char features ran at ~2,100 texts/s where
word-only ran at ~7,800. Here only the words are Python strings (one dict lookup per
word). Character n-grams are integers made from code points (up to three 21-bit code
points in one uint64) and word bigrams are pairs of word columns; a whole batch is
encoded, matched in a vectorised hash table (`keytable.KeyTable`) and counted in a
handful of numpy calls. The result equals `TfidfVectorizer(analyzer=ngrams, sublinear_tf=True,
min_df=...)` on the same texts up to column order, which a test checks.

Feature kinds: `ngrams` spells them as strings (the reference and the test oracle);
`FeatureSpace` is the fast equivalent used for training and prediction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise, repeat
from typing import Any

import numpy as np

from sentiguard.fallback.keytable import KeyTable
from sentiguard.fallback.tokenizer import Tokenizer, normalize, tokenize

# Prefixes of the reference spelling: the word "好" and the character "好" are different
# features. `normalize` turns control characters into spaces, so no text contains these.
WORD, BIGRAM, PAIR_SEP = "\x01", "\x02", "\x03"
_CODE_BITS = 21  # every code point (<= 0x10FFFF) fits in 21 bits; three fit in a uint64
# Bigram keys carry the top bit, char keys never reach it (3 x 21 = 63 bits), so both kinds
# share one KeyTable.
_PAIR_TAG = np.uint64(1 << 63)


def ngrams(text: str, tokenizer: Tokenizer = tokenize) -> list[str]:
    """Every feature of one text spelled as a string: words, word bigrams and character
    1-3-grams of the text with whitespace removed (they bridge segmentation mistakes;
    word bigrams carry negation, "不 好", and degree, "太 差"). The reference for
    `FeatureSpace`, too slow to serve."""
    norm = normalize(text)
    words = tokenizer(norm)
    feats = [WORD + w for w in words]
    feats += [BIGRAM + a + PAIR_SEP + b for a, b in pairwise(words)]
    chars = "".join(norm.split())
    feats += chars
    feats += [chars[i : i + 2] for i in range(len(chars) - 1)]
    feats += [chars[i : i + 3] for i in range(len(chars) - 2)]
    return feats


@dataclass(frozen=True)
class Encoded:
    """A batch as (row, key) occurrences: word columns, bigram keys and char keys."""

    n: int
    word_rows: np.ndarray
    word_cols: np.ndarray  # column of each known word, -1 for an unknown one
    pair_rows: np.ndarray
    pair_keys: np.ndarray  # uint64 (2^63 | col_a << 32 | col_b) of adjacent known words
    char_rows: np.ndarray
    char_keys: np.ndarray  # uint64, code points packed 21 bits apiece


def char_keys(chars: str) -> list[int]:
    """The integer keys of a string's character 1-3-grams (for tests and for naming a
    feature): a 1-gram key is its code point, longer ones pack 21 bits per code point."""
    cps = [ord(c) for c in chars]
    keys = list(cps)
    keys += [(a << _CODE_BITS) | b for a, b in pairwise(cps)]
    keys += [
        (cps[i] << 2 * _CODE_BITS) | (cps[i + 1] << _CODE_BITS) | cps[i + 2]
        for i in range(len(cps) - 2)
    ]
    return keys


def _encode_chars(pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(row, key) of every char 1-3-gram of every piece, computed for the batch at once.

    The pieces are joined with NUL; an n-gram spanning a NUL is dropped. Code points are
    never 0 inside a piece (`normalize`), so the three n-gram lengths occupy disjoint key
    ranges: [1, 2^21), [2^21, 2^42), [2^42, 2^63).
    """
    joined = "\x00".join(pieces)
    cp = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    cp = cp.astype(np.uint64)
    row = np.cumsum(cp == 0)  # row of each position (separators count to the next row)
    valid = cp != 0
    rows = [row[valid]]
    keys = [cp[valid]]
    if cp.size >= 2:
        ok = valid[:-1] & valid[1:]
        rows.append(row[:-1][ok])
        keys.append(((cp[:-1] << _CODE_BITS) | cp[1:])[ok])
    if cp.size >= 3:
        ok = valid[:-2] & valid[1:-1] & valid[2:]
        rows.append(row[:-2][ok])
        keys.append(((cp[:-2] << 2 * _CODE_BITS) | (cp[1:-1] << _CODE_BITS) | cp[2:])[ok])
    return np.concatenate(rows), np.concatenate(keys)


def _pairs(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bigram keys of adjacent known words in the same row."""
    if cols.size < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    ok = (rows[:-1] == rows[1:]) & (cols[:-1] >= 0) & (cols[1:] >= 0)
    a = cols[:-1][ok].astype(np.uint64)
    b = cols[1:][ok].astype(np.uint64)
    return rows[:-1][ok], _PAIR_TAG | (a << np.uint64(32)) | b


@dataclass
class FeatureSpace:
    """A fitted vocabulary and idf weights; turns texts into l2-normalised TF-IDF rows.

    Columns: the words (`words`, in order), then word bigrams (`pair_table`, sorted keys),
    then character n-grams (`char_table`, sorted keys); `key_table` finds the column of a
    bigram or char key. Never mutated after `fit` or
    construction, so one instance serves concurrent threads.
    """

    words: list[str]
    pair_table: np.ndarray  # sorted uint64 keys
    char_table: np.ndarray  # sorted uint64 keys
    idf: np.ndarray  # float64, one per column
    tokenizer: Tokenizer = tokenize

    word_index: dict[str, int] = field(init=False, repr=False)
    key_table: KeyTable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.word_index = {w: i for i, w in enumerate(self.words)}
        self.key_table = KeyTable(np.concatenate([self.pair_table, self.char_table]))

    @property
    def n_features(self) -> int:
        return len(self.words) + self.pair_table.size + self.char_table.size

    # --- encoding --------------------------------------------------------------------
    def encode(self, texts: Sequence[str], tokens: Sequence[list[str]] | None = None) -> Encoded:
        """Tokenise (unless `tokens` are given) and key a batch; the only per-text Python
        work is here."""
        get = self.word_index.get
        word_cols: list[int] = []
        lengths: list[int] = []
        pieces: list[str] = []
        tokenizer = self.tokenizer
        for i, text in enumerate(texts):
            norm = normalize(text)
            words = tokenizer(norm) if tokens is None else tokens[i]
            word_cols += map(get, words, repeat(-1))
            lengths.append(len(words))
            pieces.append("".join(norm.split()))
        word_rows = np.repeat(np.arange(len(texts)), lengths)
        cols = np.asarray(word_cols, dtype=np.int64)
        pair_rows, pair_keys = _pairs(word_rows, cols)
        char_rows, char_key = _encode_chars(pieces)
        return Encoded(len(texts), word_rows, cols, pair_rows, pair_keys, char_rows, char_key)

    def occurrences(self, enc: Encoded) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) of every feature occurrence found in the vocabulary."""
        known = enc.word_cols >= 0
        keys = np.concatenate([enc.pair_keys, enc.char_keys])
        key_rows = np.concatenate([enc.pair_rows, enc.char_rows])
        # Bigram and char columns follow the words, in pair_table then char_table order,
        # which is the order of the table's keys.
        position = self.key_table.lookup(keys)
        found = position >= 0
        rows = np.concatenate([enc.word_rows[known], key_rows[found]])
        cols = np.concatenate([enc.word_cols[known], position[found] + len(self.words)])
        return rows, cols

    def tfidf(
        self, texts: Sequence[str], encoded: Encoded | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR parts (indptr, columns, values) of the TF-IDF rows, as TfidfVectorizer
        (sublinear_tf=True, norm='l2', smooth_idf=True) gives them. `encoded`, if given,
        is `self.encode(texts)` done already."""
        n = len(texts)
        rows, cols = self.occurrences(encoded or self.encode(texts))
        # One sort of row * n_features + column groups identical features of a row
        # together and orders rows, then columns, as CSR wants.
        cell, counts = np.unique(rows * self.n_features + cols, return_counts=True)
        rows, cols = np.divmod(cell, self.n_features)
        values = (np.log(counts) + 1.0) * self.idf[cols]
        norms = np.sqrt(np.bincount(rows, weights=values * values, minlength=n))
        values /= np.where(norms > 0, norms, 1.0)[rows]  # an empty row has nothing to scale
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
        return indptr, cols, values

    def transform(self, texts: Sequence[str], encoded: Encoded | None = None) -> Any:
        """The TF-IDF rows as a scipy CSR matrix (n_texts x n_features)."""
        import scipy.sparse as sp  # only training and tests need a matrix

        indptr, cols, values = self.tfidf(texts, encoded)
        return sp.csr_matrix((values, cols, indptr), shape=(len(texts), self.n_features))

    def decision(self, texts: Sequence[str], coef: np.ndarray, intercept: float) -> np.ndarray:
        """`transform(texts) @ coef + intercept` without building a matrix (the serving
        path: no scipy, one bincount)."""
        n = len(texts)
        indptr, cols, values = self.tfidf(texts)
        rows = np.repeat(np.arange(n), np.diff(indptr))
        return np.bincount(rows, weights=values * coef[cols], minlength=n) + intercept

    # --- fitting ---------------------------------------------------------------------
    @classmethod
    def fit(
        cls, texts: Sequence[str], min_df: int = 2, tokenizer: Tokenizer = tokenize
    ) -> FeatureSpace:
        """Vocabulary = every feature in at least `min_df` texts; smooth idf as sklearn's."""
        return cls.fit_transform(texts, min_df, tokenizer)[0]

    @classmethod
    def fit_transform(
        cls, texts: Sequence[str], min_df: int = 2, tokenizer: Tokenizer = tokenize
    ) -> tuple[FeatureSpace, Any]:
        """`fit`, and the TF-IDF matrix of the same texts from one tokenisation.

        A word bigram in `min_df` texts has both its words in `min_df` texts, so keying
        bigrams by the columns of kept words loses none.
        """
        n = len(texts)
        tokenised = [tokenizer(normalize(t)) for t in texts]
        word_df = Counter(w for words in tokenised for w in set(words))
        words = sorted(w for w, df in word_df.items() if df >= min_df)
        probe = cls(words, np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0), tokenizer)
        enc = probe.encode(texts, tokenised)  # word columns are final: words are chosen
        pair_keys, pair_df = _doc_freq(enc.pair_rows, enc.pair_keys)
        char_keys_, char_df = _doc_freq(enc.char_rows, enc.char_keys)
        keep_pair, keep_char = pair_df >= min_df, char_df >= min_df
        df = np.concatenate(
            [
                np.asarray([word_df[w] for w in words], np.float64),
                pair_df[keep_pair].astype(np.float64),
                char_df[keep_char].astype(np.float64),
            ]
        )
        idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
        space = cls(words, pair_keys[keep_pair], char_keys_[keep_char], idf, tokenizer)
        return space, space.transform(texts, enc)

    def term(self, column: int) -> str:
        """The reference (`ngrams`) spelling of a column: for tests and explanations."""
        n_words, n_pairs = len(self.words), self.pair_table.size
        if column < n_words:
            return WORD + self.words[column]
        if column < n_words + n_pairs:
            key = int(self.pair_table[column - n_words]) & ~(1 << 63)
            return BIGRAM + self.words[key >> 32] + PAIR_SEP + self.words[key & 0xFFFFFFFF]
        key = int(self.char_table[column - n_words - n_pairs])
        mask = (1 << _CODE_BITS) - 1
        cps = [(key >> s) & mask for s in (2 * _CODE_BITS, _CODE_BITS, 0)]
        return "".join(chr(c) for c in cps if c)


def _doc_freq(rows: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys and the number of rows each occurs in."""
    if keys.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    order = np.lexsort((keys, rows))
    r, k = rows[order], keys[order]
    first = np.ones(k.size, bool)
    first[1:] = (r[1:] != r[:-1]) | (k[1:] != k[:-1])
    return np.unique(k[first], return_counts=True)
