"""Loading the primary model: ModelScope pipeline or transformers, into a `PrimaryModel`.

`load_model(settings)` returns a `PrimaryModel` (inference.py). Loading goes through
ModelScope's own `pipeline(Tasks.text_classification, model=...)`, so the embedded
directory and the real hub StructBERT take the same path; prediction then runs the
pipeline's own tokenizer and model (for StructBERT, its last layer for [CLS] only, the
one position the classifier reads) in length buckets.

The model loads in float32; then `primary.precision` (precision.py) picks its arithmetic,
measuring the candidates when it is auto, and the chosen Linear layers are swapped in
place (arithmetic.py), so the pipeline, the batched path and the worker's known-answer
probe all run the model that serves; its version then ends in "+int8" or "+bf16".

A model that cannot load raises `ModelLoadError` with `cause` one of missing, corrupt,
import, memory and a message that names the fix; the worker turns it into exit code 4.
Where the model comes from and its files' checks are in source.py.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiguard.errors import ModelLoadError
from sentiguard.primary import arithmetic
from sentiguard.primary import precision as precision_mod
from sentiguard.primary.inference import PrimaryModel, positive_index
from sentiguard.primary.source import (
    FIX_RETRAIN,
    ModelSource,
    check_directory,
    fetch,
    preflight,
    weights_sha256,
)
from sentiguard.runtime.paths import RunDir

if TYPE_CHECKING:
    from sentiguard.settings import Settings

FIX_INSTALL = "reinstall the dependencies with `make install` (pip install -r requirements.lock)"
FIX_MEMORY = (
    "give the worker more memory (or raise watchdog.memory_limit_mb and the container "
    "limit), or set primary.model to a smaller model"
)


def import_backend(backend: str) -> None:
    """Import the heavy libraries of a backend (torch, transformers, modelscope).

    Kept apart from loading so the worker can report import time and memory separately.
    """
    _quiet_libraries()
    names = ["torch", "transformers"]
    if backend == "modelscope":
        names += ["modelscope.pipelines", "modelscope.models.nlp.structbert"]
    for module in names:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ModelLoadError(
                f"cannot import {module} for primary.backend={backend}: {e}. Fix: {FIX_INSTALL}.",
                "import",
            ) from e


def _not_the_index_warning(record: logging.LogRecord) -> bool:
    return "not found in ast index file" not in record.getMessage()


def _quiet_libraries() -> None:
    """Keep ModelScope's INFO chatter and a per-forward transformers warning out of logs.

    ModelScope's get_logger() resets its level on every call, so the level must come
    from its environment variable, read once at its import. transformers warns on every
    StructBERT forward pass that an argument ModelScope passes is deprecated: nothing an
    operator can act on. ModelScope also warns at every load of the embedded model that
    its model type is missing from ModelScope's import index: true (sentiguard.primary.
    ngram_head registers it at import) and harmless.
    """
    os.environ.setdefault("MODELSCOPE_LOG_LEVEL", str(logging.WARNING))
    logging.getLogger("modelscope").addFilter(_not_the_index_warning)  # once: same object
    warnings.filterwarnings(
        "ignore", message="The `device` argument is deprecated", category=FutureWarning
    )


def load_model(settings: Settings, shared_choice: bool = False) -> PrimaryModel:
    """Load the configured primary model; raise ModelLoadError naming cause and fix.

    With `shared_choice` (the worker), `primary.precision = auto` is decided once per
    service run in its run directory (choice_record.py); otherwise here and now."""
    source = preflight(settings)
    import_backend(settings.primary.backend)
    import torch

    torch.set_num_threads(settings.primary.torch_threads)
    directory = fetch(source) if source.hub_id else source.local_dir
    assert directory is not None
    if source.hub_id:
        check_directory(directory)
    try:
        model = _build(settings, source, directory, RunDir(settings) if shared_choice else None)
    except ModelLoadError:
        raise
    except Exception as e:
        raise classify(e, source.name) from e
    return model


def _build(
    settings: Settings, source: ModelSource, directory: Path, run: RunDir | None
) -> PrimaryModel:
    seq = settings.primary.sequence_length
    asked, setting = precision_mod.requested(settings.primary.precision, settings.primary.quantize)
    common: dict[str, Any] = {
        "name": source.name,
        "version": f"{source.name}@{weights_sha256(directory)[:12]}",
        "sequence_length": seq,
        "long_text": settings.primary.long_text,
        "max_batch": settings.primary.max_batch_size,
    }
    batch = settings.primary.max_batch_size
    if settings.primary.backend == "transformers":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        hf = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        model = PrimaryModel(
            tokenizer=tokenizer,
            forward=hf,
            positive=positive_index(hf.config.id2label),
            **common,
        )
        return arithmetic.choose(model, hf, asked, setting, batch, run)
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    # Registers the StructBERT + n-gram model type (the embedded model's) with ModelScope's
    # model registry, which pipeline() builds from configuration.json's model type.
    import sentiguard.primary.ngram_head  # noqa: F401

    # Always the absolute directory: a hub id was fetched above, a local path stays local.
    pipe = pipeline(Tasks.text_classification, model=str(directory), sequence_length=seq)
    # The pipeline sets eval() on its first call; we may skip that call. The chosen
    # arithmetic's layers go in place, so pipe.model (the one-call-per-text path) is the
    # network that serves.
    net = pipe.model.eval()
    id2label = getattr(pipe, "id2label", None) or net.config.id2label
    model = PrimaryModel(
        tokenizer=_fast_twin(pipe.preprocessor.nlp_tokenizer.tokenizer, directory),
        forward=_last_layer_on_cls(net) or net,
        positive=positive_index(id2label),
        pipeline=pipe,
        **common,
    )
    return arithmetic.choose(model, net, asked, setting, batch, run)


def quantize(net: Any, how: str) -> Any:
    """`net` in eval mode, its Linear layers replaced in place by int8 ones when `how` is
    "int8" (`arithmetic.apply`), as before `primary.precision`; kept for bench/capacity.py.

    Only Linear layers: in StructBERT-base they hold ~84 % of the weights and nearly all
    the multiply-adds; embeddings, layer norms and the attention products stay float32.
    Activations are quantised with one scale per tensor, so a text's answer moves a
    little with the batch it shares (up to 0.012 on the embedded model, the same order
    as the int8 change itself); a batch's answers do not depend on other batches running
    at the same time (tests/test_quantize.py).
    """
    arithmetic.apply(net, precision_mod.QUANTIZE_ALIAS[how])
    return net


def _last_layer_on_cls(net: Any) -> Callable[..., Any] | None:
    """StructBERT's forward pass with its last encoder layer run for [CLS] only.

    The classifier reads only the final state of [CLS] (pooler, then classifier), so of
    the last layer only that position's query, attention output and feed-forward matter;
    keys and values still come from every position (the layer's own cross-attention path
    does exactly that). The arithmetic for [CLS] is the full pass's (a test checks the
    scores equal the pipeline's); on the embedded 2-layer model it skips ~40 % of the
    multiply-adds. With the n-gram head (`SbertWithNgrams`, the embedded model) its term is
    added as in its own forward. Other models (decoders, relative positions, other
    classes) run whole.
    """
    bert = getattr(net, "bert", None)
    ngrams = getattr(net, "ngram_logit", None)
    if (
        type(net).__name__ not in ("SbertForSequenceClassification", "SbertWithNgrams")
        or bert is None
        or bert.config.is_decoder
        or getattr(bert.config, "position_embedding_type", "absolute") != "absolute"
    ):
        return None
    layers = bert.encoder.layer

    def forward(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> dict[str, Any]:
        mask = bert.get_extended_attention_mask(attention_mask, input_ids.shape)
        hidden = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        for layer in layers[:-1]:
            hidden = layer(hidden, attention_mask=mask)[0]
        last, cls = layers[-1], hidden[:, :1]
        context = last.attention.self(
            cls, encoder_hidden_states=hidden, encoder_attention_mask=mask
        )[0]
        attended = last.attention.output(context, cls)
        final = last.output(last.intermediate(attended), attended)
        logits = net.classifier(net.dropout(bert.pooler(final)))
        if ngrams is not None:
            logits = net.add_ngram_term(logits, ngrams(input_ids, attention_mask))
        return {"logits": logits}

    return forward


def _fast_twin(tokenizer: Any, directory: Path) -> Any:
    """The Rust ("Fast") twin of the pipeline's tokenizer, read from the same files.

    ModelScope builds the slow Python BertTokenizer unless tokenizer_config.json says
    use_fast; on a batch the fast one is ~3x quicker and gives the same ids (a test
    checks the scores equal the pipeline's). `PrimaryModel.predict` calls it under a lock,
    for the thread-safety caveat ModelScope notes for fast tokenizers.
    """
    if getattr(tokenizer, "is_fast", False):
        return tokenizer
    import transformers

    twin = getattr(transformers, type(tokenizer).__name__ + "Fast", None)
    if twin is None:
        return tokenizer
    try:
        return twin.from_pretrained(str(directory))
    except Exception:  # no usable fast twin: the slow one is correct, only slower
        return tokenizer


def classify(error: BaseException, name: str) -> ModelLoadError:
    """Turn whatever loading raised into a ModelLoadError with a cause and a fix."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    # The innermost error says what really failed; ModelScope re-raises it once per layer.
    root = chain[-1]
    text = f"{type(root).__name__}: {root}"[:400]
    lowered = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, MemoryError) for e in chain) or any(
        s in lowered for s in ("can't allocate memory", "out of memory", "not enough memory")
    ):
        return ModelLoadError(
            f"loading {name} ran out of memory ({text}). Fix: {FIX_MEMORY}.", "memory"
        )
    if any(isinstance(e, ImportError) for e in chain):
        return ModelLoadError(
            f"loading {name} failed to import ({text}). Fix: {FIX_INSTALL}.", "import"
        )
    if any(isinstance(e, FileNotFoundError) for e in chain):
        return ModelLoadError(
            f"loading {name}: a file is missing ({text}). Fix: {FIX_RETRAIN}.", "missing"
        )
    return ModelLoadError(
        f"{name} is damaged or not a text-classification model ({text}). Fix: {FIX_RETRAIN}.",
        "corrupt",
    )
