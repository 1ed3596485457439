"""The distillation teacher: out-of-fold TF-IDF logistic-regression probabilities.

Word 1-2-gram + character 1-3-gram TF-IDF with logistic regression, the family of the
fallback. Its words come from the fallback tokenizer's python-jieba set-up
(`sentiguard.fallback.tokenizer.jieba_tokenize`: one jieba initialisation, whitespace
tokens dropped, no normalisation); python jieba rather than rjieba because the committed
primary was distilled from that segmentation. Nothing else of the fallback is used: the
teacher has its own vectorisers and classifier, fitted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sentiguard.data import Dataset
from sentiguard.fallback.tokenizer import jieba_tokenize
from sentiguard.training.recipe import Recipe

if TYPE_CHECKING:
    import numpy as np


def teacher_probabilities(
    train: Dataset,
    heldout: Dataset | None,
    recipe: Recipe,
    augmented: Sequence[tuple[int, str]] = (),
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Out-of-fold P(positive) for every training text and every (source index, text) of
    `augmented` (crops, word-drop copies); the teacher's held-out accuracy.

    Each training text's probability comes from the fold model whose labels did not
    include it, and each augmented text's from the fold model that did not see its source:
    the soft labels carry the teacher's generalisation, not its memory. The TF-IDF
    vocabulary and weights are fitted once on all training texts (no labels involved),
    which keeps the fold fits cheap.
    """
    import numpy as np
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    word = TfidfVectorizer(
        tokenizer=jieba_tokenize,
        token_pattern=None,
        ngram_range=(1, 2),
        sublinear_tf=True,
        lowercase=False,
    )
    char = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    texts = list(train.texts)
    x = hstack([word.fit_transform(texts), char.fit_transform(texts)]).tocsr()
    y = np.asarray(train.labels)

    def fitted(rows: np.ndarray) -> LogisticRegression:
        return LogisticRegression(C=recipe.teacher_c, max_iter=1000).fit(x[rows], y[rows])

    oof = np.zeros(len(texts))
    extra_p = np.zeros(len(augmented))
    extra_source = np.asarray([i for i, _ in augmented], dtype=int)
    extra_texts = [t for _, t in augmented]
    x_extra = (
        hstack([word.transform(extra_texts), char.transform(extra_texts)]).tocsr()
        if augmented
        else None
    )
    folds = StratifiedKFold(n_splits=recipe.teacher_folds, shuffle=True, random_state=recipe.seed)
    for fit_rows, predict_rows in folds.split(texts, y):
        model = fitted(fit_rows)
        oof[predict_rows] = model.predict_proba(x[predict_rows])[:, 1]
        if x_extra is not None:
            mine = np.flatnonzero(np.isin(extra_source, predict_rows))
            if len(mine):
                extra_p[mine] = model.predict_proba(x_extra[mine])[:, 1]
    accuracy = None
    if heldout is not None:
        h = list(heldout.texts)
        x_heldout = hstack([word.transform(h), char.transform(h)]).tocsr()
        p = fitted(np.arange(len(texts))).predict_proba(x_heldout)[:, 1]
        accuracy = float(np.mean((p >= 0.5) == np.asarray(heldout.labels)))
    return oof, extra_p, accuracy
