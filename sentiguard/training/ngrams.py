"""The n-gram term of `sentiguard.primary.ngram_head`: features, fit, out-of-fold log-odds.

Features are built by the network's own `ngram_counts` from the token ids training
feeds the student, so the fitted regression is the one the served model computes.
TF-IDF as the fallback's (sublinear tf, smoothed idf, l2 rows, buckets seen in fewer than
`min_df` training texts left out), logistic regression (liblinear).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from scipy.sparse import csr_matrix


@dataclass
class NgramHead:
    idf: np.ndarray
    coef: np.ndarray
    intercept: float


def tf_matrix(
    ids: Sequence[Sequence[int]], vocab_size: int, buckets: int, batch: int = 512
) -> csr_matrix:
    """Rows of sublinear term frequencies (1 + ln count) of each text's hashed n-grams."""
    import numpy as np
    import torch
    from scipy.sparse import csr_matrix

    from sentiguard.primary.ngram_head import ngram_counts
    from sentiguard.training.batches import pad

    rows_all, cols_all, vals_all = [], [], []
    with torch.inference_mode():
        for start in range(0, len(ids), batch):
            input_ids, mask = pad([list(x) for x in ids[start : start + batch]])
            rows, cols, counts = ngram_counts(input_ids, mask, vocab_size, buckets)
            rows_all.append(rows.numpy() + start)
            cols_all.append(cols.numpy())
            vals_all.append(1.0 + np.log(counts.numpy().astype(np.float64)))
    return csr_matrix(
        (np.concatenate(vals_all), (np.concatenate(rows_all), np.concatenate(cols_all))),
        shape=(len(ids), buckets),
    )


def idf_of(tf: csr_matrix, min_df: int) -> np.ndarray:
    import numpy as np

    df = np.bincount(tf.indices, minlength=tf.shape[1])
    idf = np.log((1 + tf.shape[0]) / (1 + df)) + 1.0
    idf[df < min_df] = 0.0
    return np.asarray(idf, np.float64)


def weighted(tf: csr_matrix, idf: np.ndarray) -> csr_matrix:
    from sklearn.preprocessing import normalize

    return normalize(tf.multiply(idf).tocsr(), norm="l2")


def fit_head(
    tf: csr_matrix, labels: Sequence[int], c: float, seed: int, min_df: int = 2
) -> NgramHead:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    idf = idf_of(tf, min_df)
    lr = LogisticRegression(C=c, solver="liblinear", random_state=seed)
    lr.fit(weighted(tf, idf), np.asarray(labels))
    return NgramHead(idf, np.asarray(lr.coef_[0], np.float64), float(lr.intercept_[0]))


def out_of_fold(
    tf: csr_matrix, labels: Sequence[int], c: float, seed: int, folds: int, min_df: int = 2
) -> np.ndarray:
    """Each text's log-odds from the fold model that did not see its label (the idf, which
    uses no labels, from all texts)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels)
    x = weighted(tf, idf_of(tf, min_df))
    out = np.zeros(len(y))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, predict_rows in splitter.split(np.zeros(len(y)), y):
        lr = LogisticRegression(C=c, solver="liblinear", random_state=seed)
        lr.fit(x[fit_rows], y[fit_rows])
        out[predict_rows] = lr.decision_function(x[predict_rows])
    return out


def decision(head: NgramHead, tf: csr_matrix) -> np.ndarray:
    import numpy as np

    return np.asarray(weighted(tf, head.idf) @ head.coef + head.intercept)
