"""The student: the embedded StructBERT, its tokenizer, and the fine-tuning loop.

The model is ModelScope's own `SbertForSequenceClassification`, so the worker loads it
with `pipeline(Tasks.text_classification, model=<dir>)` exactly as it loads the real hub
model; the label names (id 0 负面, id 1 正面) mirror that model so one mapping serves both.
The loss mixes the hard label with the teacher's probability (`Recipe.distill_weight`),
and the weights of the last `Recipe.average_last` epochs are averaged.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiguard.primary import vocab as vocab_mod
from sentiguard.training.batches import length_batches, pad
from sentiguard.training.recipe import Recipe
from sentiguard.training.schedule import progress, warmup_cosine

if TYPE_CHECKING:
    import torch
    from transformers import BertTokenizerFast

# Label ids and names as in damo/nlp_structbert_sentiment-classification_chinese-base.
ID2LABEL = {0: "负面", 1: "正面"}
LABEL2ID = {name: i for i, name in ID2LABEL.items()}


def make_tokenizer(vocab_tokens: list[str], directory: Path) -> BertTokenizerFast:
    """The fast twin of the BertTokenizer ModelScope builds from `vocab.txt` at load time.

    Training uses the fast one for speed; a test checks both give the same ids.
    """
    from transformers import BertTokenizerFast

    vocab_mod.write_vocab(vocab_tokens, directory / "vocab.txt")
    return BertTokenizerFast(str(directory / "vocab.txt"), do_lower_case=True)


def encode(tokenizer: BertTokenizerFast, texts: Sequence[str], max_length: int) -> list[list[int]]:
    if not texts:  # the fast tokenizer raises IndexError on an empty batch
        return []
    return list(tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"])


def build_model(recipe: Recipe, vocab_size: int) -> Any:
    """StructBERT for sequence classification; with `recipe.ngram_c`, the subclass with the
    n-gram term (its weights are set by the caller)."""
    from modelscope.models.nlp.structbert import SbertConfig, SbertForSequenceClassification

    config = SbertConfig(
        vocab_size=vocab_size,
        hidden_size=recipe.hidden,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        intermediate_size=recipe.intermediate,
        hidden_dropout_prob=recipe.dropout,
        attention_probs_dropout_prob=recipe.attention_dropout,
        max_position_embeddings=recipe.max_position_embeddings,
        # The default (5e-5) runs a second, adversarial forward/backward on every step:
        # twice the cost, and nothing measured here says it pays at this size.
        adv_grad_factor=None,
        id2label=dict(ID2LABEL),
        label2id=dict(LABEL2ID),
        num_labels=len(ID2LABEL),
    )
    if recipe.ngram_c is not None:
        from sentiguard.primary.ngram_head import BUCKETS, SbertWithNgrams

        config.ngram_buckets = BUCKETS
        return SbertWithNgrams(config)
    return SbertForSequenceClassification(config)


def predict_proba(model: Any, ids: Sequence[Sequence[int]], batch_size: int = 128) -> list[float]:
    """P(positive) for already-encoded texts, in input order (length-sorted batches)."""
    import torch

    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [0.0] * len(ids)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, mask = pad([ids[i] for i in rows])
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            probs = torch.softmax(logits.float(), dim=-1)[:, LABEL2ID["正面"]].tolist()
            for i, p in zip(rows, probs, strict=True):
                out[i] = p
    return out


def accuracy(probs: Sequence[float], labels: Sequence[int]) -> float:
    return sum((p >= 0.5) == bool(y) for p, y in zip(probs, labels, strict=True)) / len(labels)


def fit(
    model: Any,
    ids: list[list[int]],
    labels: Sequence[int],
    soft: Sequence[float] | None,
    recipe: Recipe,
    on_epoch: Callable[[int, Any], None] | None = None,
    offsets: Sequence[float] | None = None,
) -> None:
    """Train `model` in place; ends with the average of the last `average_last` epochs.

    `offsets` (one per input) replace the n-gram head's term in training
    (`SbertWithNgrams.forward(ngram_offset=...)`)."""
    import torch

    rng = random.Random(recipe.seed)
    lengths = [len(x) for x in ids]
    total = math.ceil(len(ids) / recipe.batch_size) * recipe.epochs
    # No weight decay on biases and LayerNorm gains, as in BERT's own recipe.
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
    )
    scheduler = warmup_cosine(optimizer, total, recipe.warmup_fraction)
    y_hard = torch.tensor(list(labels), dtype=torch.long)
    y_soft = torch.tensor(list(soft), dtype=torch.float) if soft is not None else None
    g = torch.tensor(list(offsets), dtype=torch.float) if offsets is not None else None
    snapshots: list[dict[str, torch.Tensor]] = []
    bar = progress(total, "train primary")
    step = 0
    for epoch in range(recipe.epochs):
        model.train()
        running = 0.0
        for n, rows in enumerate(length_batches(lengths, recipe.batch_size, rng)):
            input_ids, mask = pad([ids[i] for i in rows])
            index = torch.tensor(rows)
            extra = {} if g is None else {"ngram_offset": g[index]}
            logits = model(input_ids=input_ids, attention_mask=mask, **extra).logits
            log_p = torch.log_softmax(logits, dim=-1)
            loss = torch.nn.functional.nll_loss(log_p, y_hard[index])
            if y_soft is not None and recipe.distill_weight > 0:
                p_pos = y_soft[index]
                target = torch.stack([1 - p_pos, p_pos], dim=-1)
                soft_loss = -(target * log_p).sum(dim=-1).mean()
                loss = (1 - recipe.distill_weight) * loss + recipe.distill_weight * soft_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            running = loss.item() if n == 0 else 0.98 * running + 0.02 * loss.item()
            bar.set_postfix(epoch=f"{epoch + 1}/{recipe.epochs}", loss=f"{running:.4f}")
            bar.update()
        if epoch >= recipe.epochs - recipe.average_last:
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if on_epoch is not None:
            on_epoch(epoch, model)
    bar.close()
    if len(snapshots) > 1:
        averaged = {
            k: (
                torch.stack([s[k].float() for s in snapshots]).mean(0).to(v.dtype)
                if v.is_floating_point()
                else v
            )
            for k, v in snapshots[-1].items()
        }
        model.load_state_dict(averaged)
    model.eval()
