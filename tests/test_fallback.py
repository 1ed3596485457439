"""The fallback classifier: tokenizer, features, training, persistence, calibration.

Training tests use a small slice of the training split so they stay fast; calibration and
accuracy checks use the committed model (models/fallback) on the held-out split.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

from sentiguard import settings as settings_mod
from sentiguard.data import Dataset, split, split_dataset
from sentiguard.errors import DataError, ModelLoadError
from sentiguard.fallback.features import FeatureSpace, char_keys, ngrams
from sentiguard.fallback.keytable import KeyTable
from sentiguard.fallback.model import MANIFEST_FILE, MODEL_FILE, FallbackModel
from sentiguard.fallback.tokenizer import jieba_tokenize, normalize, tokenize
from sentiguard.training.fallback import train_and_save

SEED = 7
EDGE_TEXTS = ["", "   ", "ＡＢＣ！好…", "a\x00b\x01c", "\ud800好", "好", "👍👍 很好"]


@pytest.fixture(scope="module")
def small() -> Dataset:
    train = split().train
    return Dataset(train.texts[:1200], train.labels[:1200], "first 1200 training texts")


@pytest.fixture(scope="module")
def small_model(small: Dataset) -> FallbackModel:
    return FallbackModel.train(small, seed=SEED)


@pytest.fixture(scope="module")
def committed() -> FallbackModel:
    path = settings_mod.load(environ={}).fallback.model_dir
    return FallbackModel.load(path)


# --- tokenizer ---------------------------------------------------------------------------
def test_tokenizer_segments_words() -> None:
    assert tokenize("这本书我很喜欢") == ["这", "本书", "我", "很", "喜欢"]
    assert "质量" in tokenize("质量 太差 了")
    assert " " not in tokenize("质量 太差 了")  # whitespace never becomes a word


def test_both_backends_agree_on_ordinary_chinese() -> None:
    for text in ("服务态度很好，下次还来", "房间太小了，不推荐", "物流快，包装完好"):
        assert tokenize(text) == jieba_tokenize(text)


def test_normalize_folds_full_width_and_controls() -> None:
    assert normalize("ＡＢＣ！１２３") == "abc!123"
    assert normalize("好…") == "好..."
    assert "\x00" not in normalize("a\x00b") and normalize("a\x00b") == "a b"
    assert normalize("这本书") == "这本书"


def test_lone_surrogate_does_not_break_the_tokenizer() -> None:
    assert "好" in "".join(tokenize("\ud800好"))


# --- features ----------------------------------------------------------------------------
def test_feature_space_equals_sklearn_tfidf(small: Dataset) -> None:
    """The vectorised features are exactly TfidfVectorizer over the string n-grams."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = small.texts[:600]
    space = FeatureSpace.fit(texts, min_df=2)
    reference = TfidfVectorizer(analyzer=ngrams, min_df=2, sublinear_tf=True).fit(texts)
    terms = [space.term(i) for i in range(space.n_features)]
    assert sorted(terms) == sorted(reference.vocabulary_)
    order = np.array([reference.vocabulary_[t] for t in terms])
    assert np.allclose(space.idf, reference.idf_[order])
    probe = texts[:50] + small.texts[600:650] + EDGE_TEXTS
    ours = space.transform(probe).toarray()
    theirs = reference.transform(probe).toarray()[:, order]
    assert np.abs(ours - theirs).max() < 1e-12
    _, fitted = FeatureSpace.fit_transform(texts, min_df=2)
    assert np.abs(fitted.toarray() - reference.transform(texts).toarray()[:, order]).max() < 1e-12


def test_char_keys_are_the_encoded_ngrams() -> None:
    space = FeatureSpace.fit(["很好很好", "很好"], min_df=1)
    for key, gram in zip(char_keys("很好"), ["很", "好", "很好"], strict=True):
        column = (
            len(space.words) + space.pair_table.size + int(np.searchsorted(space.char_table, key))
        )
        assert space.term(column) == gram


def test_key_table_matches_a_dict() -> None:
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(1, 2**63, 5000, dtype=np.uint64))
    table = KeyTable(keys)
    absent = rng.integers(1, 2**63, 2000, dtype=np.uint64)
    queries = np.concatenate([keys[::-3], absent])
    expected = {int(k): i for i, k in enumerate(keys)}
    assert table.lookup(queries).tolist() == [expected.get(int(q), -1) for q in queries]
    assert KeyTable(np.zeros(0, np.uint64)).lookup(queries).tolist() == [-1] * queries.size
    with pytest.raises(ValueError):
        KeyTable(np.array([0, 5], np.uint64))


# --- training and prediction -------------------------------------------------------------
def test_training_is_deterministic(small: Dataset, small_model: FallbackModel) -> None:
    again = FallbackModel.train(small, seed=SEED)
    texts = split().heldout.texts[:200]
    assert again.predict_proba(texts) == small_model.predict_proba(texts)


def test_batch_and_single_predictions_agree(small_model: FallbackModel) -> None:
    texts = split().heldout.texts[:20] + EDGE_TEXTS
    batch = small_model.predict_proba(texts)
    assert len(batch) == len(texts)
    assert batch == pytest.approx([small_model.predict_proba([t])[0] for t in texts], abs=1e-12)
    assert small_model.predict_proba([]) == []


def test_concurrent_predictions_match_serial(small_model: FallbackModel) -> None:
    texts = split().heldout.texts[:300]
    expected = small_model.predict_proba(texts)
    results: dict[int, list[float]] = {}

    def work(i: int) -> None:
        results[i] = small_model.predict_proba(texts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [results[i] for i in range(4)] == [expected] * 4


def test_save_load_round_trip(small_model: FallbackModel, tmp_path: Path) -> None:
    path = small_model.save(tmp_path / "fb")
    loaded = FallbackModel.load(tmp_path / "fb")
    texts = split().heldout.texts[:200] + EDGE_TEXTS
    assert loaded.predict_proba(texts) == pytest.approx(small_model.predict_proba(texts), abs=1e-5)
    assert loaded.version == small_model.version
    assert loaded.version.startswith("fb@") and len(loaded.version) == len("fb@") + 12
    small_model.save(tmp_path / "fb")  # same content, same version
    assert FallbackModel.load(tmp_path / "fb").version == loaded.version
    assert path.name == MODEL_FILE


def test_load_errors_name_cause_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="sentiguard train fallback") as missing:
        FallbackModel.load(tmp_path / "nowhere")
    assert missing.value.cause == "missing"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MODEL_FILE).write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match="retrain") as corrupt:
        FallbackModel.load(tmp_path / "bad")
    assert corrupt.value.cause == "corrupt"
    (tmp_path / "bad" / MODEL_FILE).write_bytes(pickle.dumps({"format": 99}))
    with pytest.raises(ModelLoadError) as old:
        FallbackModel.load(tmp_path / "bad")
    assert old.value.cause == "corrupt"


def test_train_and_save_writes_manifest(small: Dataset, tmp_path: Path) -> None:
    parts = split_dataset(small, seed=SEED)
    train, heldout = parts.train, parts.heldout
    manifest = train_and_save(train, heldout, tmp_path / "m", seed=SEED, source={"source": "t"})
    on_disk = json.loads((tmp_path / "m" / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert on_disk == manifest
    assert manifest["version"] == FallbackModel.load(tmp_path / "m").version
    model_bytes = (tmp_path / "m" / MODEL_FILE).read_bytes()
    assert manifest["model_sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert manifest["version"].endswith("@" + manifest["model_sha256"][:12])
    data = manifest["training_data"]
    assert data["train_sha256"] == train.sha256() and data["split_seed"] == SEED
    held = manifest["metrics"]["heldout"]
    assert held["n"] == len(heldout) and 0.5 < held["accuracy"] <= 1.0
    assert {"scikit-learn", "numpy", "rjieba", "python"} <= set(manifest["libraries"])
    assert manifest["created"].endswith("Z")


# --- the committed model -----------------------------------------------------------------
def test_committed_model_probabilities_are_calibrated(committed: FallbackModel) -> None:
    heldout = split().heldout
    p = np.asarray(committed.predict_proba(heldout.texts))
    y = np.asarray(heldout.labels)
    assert ((p >= 0) & (p <= 1)).all()
    assert p[y == 1].mean() > p[y == 0].mean() + 0.4
    # Reliability: in every well-filled probability bin, the share of positives is close to
    # the mean predicted probability (an over-confident model fails the outer bins).
    bins = np.minimum((p * 5).astype(int), 4)
    for b in range(5):
        inside = bins == b
        if inside.sum() >= 50:
            assert abs(p[inside].mean() - y[inside].mean()) < 0.1, f"bin {b}"


def test_committed_model_accuracy_and_manifest(committed: FallbackModel) -> None:
    heldout = split().heldout
    p = committed.predict_proba(heldout.texts)
    accuracy = np.mean([(q >= 0.5) == bool(y) for q, y in zip(p, heldout.labels, strict=True)])
    assert accuracy >= 0.845
    directory = settings_mod.load(environ={}).fallback.model_dir
    manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["version"] == committed.version  # the manifest describes this file
    assert manifest["training_data"]["heldout_sha256"] == heldout.sha256()
    assert abs(manifest["metrics"]["heldout"]["accuracy"] - accuracy) < 1e-3


def test_python_jieba_gives_nearly_the_same_answers(committed: FallbackModel) -> None:
    texts = split().heldout.texts[:300]
    fast = np.asarray(committed.predict_proba(texts))
    slow = np.asarray(committed.with_tokenizer("jieba").predict_proba(texts))
    assert np.mean((fast >= 0.5) == (slow >= 0.5)) >= 0.97


def test_training_on_one_label_says_what_is_missing() -> None:
    one_sided = Dataset(["好", "很好", "非常好", "不错", "棒"], [1, 1, 1, 1, 1], "ones.csv")
    with pytest.raises(DataError, match="0 negative"):
        FallbackModel.train(one_sided, seed=SEED)
