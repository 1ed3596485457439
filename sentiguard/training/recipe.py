"""`Recipe`: every number that decides the embedded primary's weights.

Same recipe + same data = same model; the manifest records the recipe, and a test checks
that the committed model's manifest holds `DEFAULT_RECIPE`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights. Same recipe + same data = same model."""

    layers: int = 2
    hidden: int = 256
    heads: int = 4
    intermediate: int = 1024
    max_length: int = 128  # tokens incl. [CLS]/[SEP]; longer texts are truncated in training
    max_position_embeddings: int = 512  # lets a worker ask for a longer sequence_length
    dropout: float = 0.1  # hidden layers
    # Attention-probability dropout: bernoulli sampling costs ~a third of a training step
    # on these CPUs, so it is off unless a measurement says it pays.
    attention_dropout: float = 0.0
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    min_char_count: int = 2
    seed: int = 20261127
    # 0: hard labels only (the committed model: the n-gram head carries what a teacher
    # would, docs/primary-model.md run s1); 1: teacher probabilities only.
    distill_weight: float = 0.0
    teacher_folds: int = 5
    teacher_c: float = 4.0
    # Extra teacher-labelled inputs: per multi-clause training text, this many crops (a
    # random run of at least half its clauses), labelled by the fold model that never saw
    # the text. More inputs carry more of the teacher's function into the student.
    augment_crops: int = 0  # used only with distill_weight > 0 (the teacher labels them)
    # More teacher-labelled inputs: per training text of 3+ words, this many copies that
    # leave out each word with probability `drop_rate`. The teacher's probability for a
    # copy says how much the missing words mattered, which the hard label cannot.
    augment_drops: int = 0  # as augment_crops
    drop_rate: float = 0.15
    # Masked-LM pretraining before fine-tuning (sentiguard.training.pretrain): epochs over
    # People's Daily + the training reviews, whole-word masked at `mask_rate`.
    pretrain_epochs: int = 0
    # What the masked LM reads: None = People's Daily + the training reviews; "reviews" =
    # the training reviews alone (issue 17 trains on the review corpora and nothing else).
    pretrain_text: str | None = None
    pretrain_lr: float = 1e-3
    mask_rate: float = 0.15
    average_last: int = 2  # average the weights at the end of the last N epochs
    # The n-gram term (sentiguard.primary.ngram_head): None = plain StructBERT; else the
    # C of its TF-IDF logistic regression over hashed id 1-3-grams. The encoder trains on
    # the regression's out-of-fold log-odds (`ngram_folds` folds) added to its logit;
    # n-grams seen in fewer than `ngram_min_df` training texts get no bucket weight.
    ngram_c: float | None = 3.0
    ngram_folds: int | None = 5
    ngram_min_df: int | None = 2
    # One thread: on this shared 2-core machine two threads ran ~7x slower per step than
    # one (OpenMP workers spin while other processes hold the cores).
    threads: int = 1
    limit: int | None = None  # train on the first N texts only (tests, smoke runs)
    extra: dict[str, Any] = field(default_factory=dict)


DEFAULT_RECIPE = Recipe()
