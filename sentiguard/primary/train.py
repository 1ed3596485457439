"""`sentiguard train primary`: the embedded StructBERT, trained from scratch, reproducibly.

The model is ModelScope's own `SbertForSequenceClassification`, so the worker loads it
with `pipeline(Tasks.text_classification, model=<dir>)` exactly as it loads the real hub
model `damo/nlp_structbert_sentiment-classification_chinese-base`; the label names
(id 0 负面, id 1 正面) mirror that model so one mapping serves both.

Recipe (every number lives in `Recipe`, and the manifest records it):

- data: `sentiguard.data.split().train`; the held-out part is only scored, never trained
  on, and never used to pick a checkpoint. With `--data FILE` the whole file trains.
- vocabulary: characters of the training texts (`sentiguard.primary.vocab`).
- distillation: a word + character TF-IDF logistic-regression teacher gives each training
  text a probability from out-of-fold predictions (the teacher never saw the text it
  labels, so its soft labels carry its generalisation, not its memory); the loss mixes
  that soft target with the hard label. Clause crops of the training texts and copies
  with a few words left out, labelled by the same out-of-fold teacher, add inputs.
- masked-LM pretraining (`sentiguard.primary.pretrain`): available, off by default (it
  made this model worse, docs/primary-model.md run p1).
- batches of similar length with per-batch padding: reviews are short (median ~45
  characters), so padding every batch to the sequence length would waste most compute.
- checkpoint averaging: the weights of the last few epochs are averaged.

Output directory (ModelScope's local layout): configuration.json, config.json,
vocab.txt, tokenizer_config.json, model.safetensors, manifest.json.
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiguard.data import Dataset, read_file, split
from sentiguard.errors import DataError, ExitCode
from sentiguard.logs import log_event
from sentiguard.primary import vocab as vocab_mod
from sentiguard.primary.model import sha256_file

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import BertTokenizerFast

    from sentiguard.settings import Settings

# Label ids and names as in damo/nlp_structbert_sentiment-classification_chinese-base.
ID2LABEL = {0: "负面", 1: "正面"}
LABEL2ID = {name: i for i, name in ID2LABEL.items()}
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
MODEL_NAME = "sentiguard-structbert-tiny"


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
    distill_weight: float = 0.7  # 0: hard labels only; 1: teacher probabilities only
    teacher_folds: int = 5
    teacher_c: float = 4.0
    # Extra teacher-labelled inputs: per multi-clause training text, this many crops (a
    # random run of at least half its clauses), labelled by the fold model that never saw
    # the text. More inputs carry more of the teacher's function into the student.
    augment_crops: int = 1
    # More teacher-labelled inputs: per training text of 3+ words, this many copies that
    # leave out each word with probability `drop_rate`. The teacher's probability for a
    # copy says how much the missing words mattered, which the hard label cannot.
    augment_drops: int = 1
    drop_rate: float = 0.15
    # Masked-LM pretraining before fine-tuning (sentiguard.primary.pretrain): epochs over
    # People's Daily + the training reviews, whole-word masked at `mask_rate`.
    pretrain_epochs: int = 0
    pretrain_lr: float = 1e-3
    mask_rate: float = 0.15
    average_last: int = 2  # average the weights at the end of the last N epochs
    # One thread: on this shared 2-core machine two threads ran ~7x slower per step than
    # one (OpenMP workers spin while other processes hold the cores).
    threads: int = 1
    limit: int | None = None  # train on the first N texts only (tests, smoke runs)
    extra: dict[str, Any] = field(default_factory=dict)


DEFAULT_RECIPE = Recipe()


@dataclass
class TrainResult:
    out: Path
    heldout_accuracy: float | None
    teacher_heldout_accuracy: float | None
    train_seconds: float
    weights_sha256: str


# --- data preparation ---------------------------------------------------------------


def make_tokenizer(vocab_tokens: list[str], directory: Path) -> BertTokenizerFast:
    """The fast twin of the BertTokenizer ModelScope builds from `vocab.txt` at load time.

    Training uses the fast one for speed; a test checks both give the same ids.
    """
    from transformers import BertTokenizerFast

    vocab_mod.write_vocab(vocab_tokens, directory / "vocab.txt")
    return BertTokenizerFast(str(directory / "vocab.txt"), do_lower_case=True)


def encode(tokenizer: BertTokenizerFast, texts: Sequence[str], max_length: int) -> list[list[int]]:
    return list(tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"])


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of indices with similar lengths, in random order.

    Shuffle, then sort within pools of 50 batches: padding waste drops to a few percent
    while each epoch still sees different neighbours.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def pad(ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[row, : len(x)] = 1
    return input_ids, mask


CLAUSE_END = re.compile(r"(?<=[，。！？；,.!?;~～…\s])")


def make_crops(texts: Sequence[str], copies: int, seed: int) -> list[tuple[int, str]]:
    """(source index, crop) pairs: each crop keeps a random run of >= half the clauses."""
    rng = random.Random(seed)
    crops: list[tuple[int, str]] = []
    for index, text in enumerate(texts):
        clauses = [c for c in CLAUSE_END.split(text) if c.strip()]
        if len(clauses) < 2:
            continue
        for _ in range(copies):
            size = rng.randint(math.ceil(len(clauses) / 2), len(clauses) - 1)
            start = rng.randint(0, len(clauses) - size)
            crops.append((index, "".join(clauses[start : start + size]).strip()))
    return crops


def make_word_drops(
    texts: Sequence[str], copies: int, rate: float, seed: int
) -> list[tuple[int, str]]:
    """(source index, copy) pairs: each copy leaves out each word with probability
    `rate`, and at least one word; whitespace stays."""
    from sentiguard.fallback.tokenizer import segment

    rng = random.Random(seed)
    drops: list[tuple[int, str]] = []
    for index, text in enumerate(texts):
        pieces = segment(text)
        words = [i for i, w in enumerate(pieces) if not w.isspace()]
        if len(words) < 3:
            continue
        for _ in range(copies):
            gone = {i for i in words if rng.random() < rate} or {rng.choice(words)}
            if len(gone) < len(words):
                drops.append((index, "".join(w for i, w in enumerate(pieces) if i not in gone)))
    return drops


# --- the teacher ---------------------------------------------------------------------


def teacher_probabilities(
    train: Dataset,
    heldout: Dataset | None,
    recipe: Recipe,
    augmented: Sequence[tuple[int, str]] = (),
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Out-of-fold P(positive) for every training text and every (source index, text) of
    `augmented` (crops, word-drop copies); the teacher's held-out accuracy.

    Word 1-2-gram (jieba) + character 1-3-gram TF-IDF with logistic regression, the same
    family as the fallback, built here so this recipe does not depend on the fallback's
    code. Each training text's probability comes from the fold model whose labels did not
    include it. The TF-IDF vocabulary and weights are fitted once on all training texts
    (no labels involved), which keeps the five fits cheap.
    """
    import jieba
    import numpy as np
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    jieba.setLogLevel(60)  # jieba prints its dictionary loading to stderr otherwise

    def words(text: str) -> list[str]:
        return [w for w in jieba.lcut(text) if w.strip()]

    word = TfidfVectorizer(
        tokenizer=words,
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


# --- training ------------------------------------------------------------------------


def build_model(recipe: Recipe, vocab_size: int) -> Any:
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


def warmup_cosine(optimizer: Any, total: int, warmup_fraction: float) -> Any:
    """A scheduler for `total` steps: linear warm-up over `warmup_fraction`, then cosine to
    zero."""
    import torch

    warmup = max(1, int(total * warmup_fraction))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)


def progress(total: int, desc: str) -> Any:
    """The training progress bar (steps, loss, ETA) on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, smoothing=0.05, mininterval=1)


def fit(
    model: Any,
    ids: list[list[int]],
    labels: Sequence[int],
    soft: Sequence[float] | None,
    recipe: Recipe,
    on_epoch: Callable[[int, Any], None] | None = None,
) -> None:
    """Train `model` in place; ends with the average of the last `average_last` epochs."""
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
    snapshots: list[dict[str, torch.Tensor]] = []
    bar = progress(total, "train primary")
    step = 0
    for epoch in range(recipe.epochs):
        model.train()
        running = 0.0
        for n, rows in enumerate(length_batches(lengths, recipe.batch_size, rng)):
            input_ids, mask = pad([ids[i] for i in rows])
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            log_p = torch.log_softmax(logits, dim=-1)
            index = torch.tensor(rows)
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


# --- output --------------------------------------------------------------------------


def configuration(recipe: Recipe) -> dict[str, Any]:
    """ModelScope's configuration.json: what `pipeline()` reads to pick classes."""
    return {
        "framework": "pytorch",
        "task": "text-classification",
        "pipeline": {"type": "sentiment-classification"},
        "model": {"type": "structbert"},
        "preprocessor": {"type": "sen-cls-tokenizer", "first_sequence": "text"},
        # Not read by ModelScope; tells the worker the length the model was trained on.
        "sentiguard": {"trained_sequence_length": recipe.max_length},
    }


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("torch", "transformers", "modelscope", "scikit-learn", "jieba", "safetensors")
    return {name: version(name) for name in names}


def save(
    model: Any,
    vocab_tokens: list[str],
    out: Path,
    recipe: Recipe,
    manifest_extra: dict[str, Any],
) -> str:
    """Write the ModelScope directory layout plus manifest.json; return the weights' sha256."""
    out.mkdir(parents=True, exist_ok=True)
    # ModelScope's own save_pretrained wants its trainer's checkpoint names; the files a
    # from_pretrained load needs are just transformers' config.json plus the weights.
    from safetensors.torch import save_file

    model.config.to_json_file(str(out / "config.json"))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    vocab_mod.write_vocab(vocab_tokens, out / "vocab.txt")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "model_max_length": recipe.max_position_embeddings})
        + "\n",
        encoding="utf-8",
    )
    (out / "configuration.json").write_text(
        json.dumps(configuration(recipe), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    digest = sha256_file(out / WEIGHTS_FILE)
    manifest = {
        "name": MODEL_NAME,
        "kind": "primary",
        "architecture": "modelscope SbertForSequenceClassification (StructBERT), from scratch",
        "weights": {
            "file": WEIGHTS_FILE,
            "sha256": digest,
            "bytes": (out / WEIGHTS_FILE).stat().st_size,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "labels": {str(k): v for k, v in ID2LABEL.items()},
        "vocab": {"size": len(vocab_tokens), "min_count": recipe.min_char_count},
        "sequence_length": recipe.max_length,
        "recipe": {k: v for k, v in asdict(recipe).items() if k not in ("extra",)} | recipe.extra,
        "libraries": library_versions(),
        "python": sys.version.split()[0],
        "command": "sentiguard train primary",
        **manifest_extra,
    }
    (out / MANIFEST_FILE).write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return digest


def train(
    train_set: Dataset,
    heldout: Dataset | None,
    out: Path,
    recipe: Recipe = DEFAULT_RECIPE,
    data_info: dict[str, Any] | None = None,
) -> TrainResult:
    """Train on `train_set`, score on `heldout` (never trained on), write the model to `out`."""
    import numpy as np
    import torch

    started = time.monotonic()
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    np.random.seed(recipe.seed % 2**32)
    if recipe.limit is not None:
        train_set = Dataset(
            train_set.texts[: recipe.limit], train_set.labels[: recipe.limit], train_set.source
        )
    if len(set(train_set.labels)) < 2:
        raise DataError(
            f"{train_set.source}: every text has the same label; the model needs both "
            "positive (1) and negative (0) examples. Hint: check the label column."
        )
    out.mkdir(parents=True, exist_ok=True)
    vocab_tokens = vocab_mod.build_vocab(train_set.texts, recipe.min_char_count)
    tokenizer = make_tokenizer(vocab_tokens, out)
    ids = encode(tokenizer, train_set.texts, recipe.max_length)
    log_event(
        "primary_train_start",
        texts=len(ids),
        vocab=len(vocab_tokens),
        recipe=asdict(recipe),
        out=str(out),
    )
    labels = list(train_set.labels)
    soft = None
    teacher_acc = None
    if recipe.distill_weight > 0:
        t0 = time.monotonic()
        crops = make_crops(train_set.texts, recipe.augment_crops, recipe.seed)
        drops = make_word_drops(
            train_set.texts, recipe.augment_drops, recipe.drop_rate, recipe.seed
        )
        augmented = crops + drops
        soft_arr, extra_arr, teacher_acc = teacher_probabilities(
            train_set, heldout, recipe, augmented
        )
        soft = soft_arr.tolist()
        log_event(
            "primary_teacher",
            seconds=round(time.monotonic() - t0, 1),
            oof_accuracy=round(accuracy(soft, train_set.labels), 4),
            heldout_accuracy=teacher_acc,
            crops=len(crops),
            word_drops=len(drops),
        )
        # A crop or a copy keeps its source's hard label and gets its own soft label.
        ids += encode(tokenizer, [t for _, t in augmented], recipe.max_length)
        labels += [train_set.labels[i] for i, _ in augmented]
        soft += extra_arr.tolist()
    heldout_ids = encode(tokenizer, heldout.texts, recipe.max_length) if heldout else None

    def on_epoch(epoch: int, model: Any) -> None:
        if heldout is not None and heldout_ids is not None and recipe.extra.get("trace"):
            # Diagnostic only (experiments): never used to choose a checkpoint.
            acc = accuracy(predict_proba(model, heldout_ids), heldout.labels)
            log_event("primary_epoch", epoch=epoch + 1, heldout_accuracy=round(acc, 4))

    model = build_model(recipe, len(vocab_tokens))
    pretrained: dict[str, Any] = {}
    if recipe.pretrain_epochs > 0:
        from sentiguard.primary.pretrain import pretrain

        t0 = time.monotonic()
        history = pretrain(model, tokenizer, train_set.texts, recipe)
        pretrained = {
            "pretrain_seconds": round(time.monotonic() - t0, 1),
            "pretrain_masked_accuracy": round(history[-1]["masked_accuracy"], 4),
        }
        log_event("primary_pretrain_done", **pretrained)
    fit(model, ids, labels, soft, recipe, on_epoch)
    heldout_acc = None
    if heldout is not None and heldout_ids is not None:
        heldout_acc = accuracy(predict_proba(model, heldout_ids), heldout.labels)
    seconds = time.monotonic() - started
    metrics: dict[str, Any] = {
        "heldout_accuracy": None if heldout_acc is None else round(heldout_acc, 4),
        "teacher_heldout_accuracy": None if teacher_acc is None else round(teacher_acc, 4),
        "train_seconds": round(seconds, 1),
        "threads": recipe.threads,
        **pretrained,
    }
    digest = save(model, vocab_tokens, out, recipe, {"metrics": metrics, **(data_info or {})})
    log_event("primary_train_done", **metrics, out=str(out), weights_sha256=digest)
    return TrainResult(out, heldout_acc, teacher_acc, seconds, digest)


def train_command(
    settings: Settings,
    data: str | None = None,
    out: str | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
) -> int:
    """Entry point of `sentiguard train primary [--data FILE] [--out DIR]`.

    Without --data: train on the packaged corpus' training part, score the held-out part.
    With --data: train on the whole file (nothing is held out; score another file with
    `sentiguard eval --model primary --data FILE`).
    """
    target = Path(out) if out else settings.primary.model_dir
    if data is None:
        parts = split()
        train_set, heldout = parts.train, parts.heldout
        info = {
            "data": {
                "source": parts.train.source,
                "train_sha256": parts.train.sha256(),
                "heldout_sha256": parts.heldout.sha256(),
                "train_texts": len(parts.train),
                "heldout_texts": len(parts.heldout),
                "split_seed": parts.seed,
                "dropped_duplicates": parts.dropped_duplicates,
                "dropped_conflicts": parts.dropped_conflicts,
            }
        }
    else:
        try:
            train_set = read_file(data)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return int(ExitCode.ERROR)
        heldout = None
        info = {
            "data": {
                "source": str(data),
                "train_sha256": train_set.sha256(),
                "train_texts": len(train_set),
            }
        }
    try:
        result = train(train_set, heldout, target, recipe, info)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return int(ExitCode.ERROR)
    acc = "n/a" if result.heldout_accuracy is None else f"{result.heldout_accuracy:.4f}"
    print(
        f"primary model written to {result.out} in {result.train_seconds:.0f} s; "
        f"held-out accuracy {acc}; weights sha256 {result.weights_sha256[:12]}"
    )
    return int(ExitCode.OK)
