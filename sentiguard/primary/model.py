"""The primary model: loading (ModelScope pipeline or transformers) and batched prediction.

`load_model(settings)` returns a `PrimaryModel` whose `predict(texts)` gives one
`Prediction` per text, in input order. Loading goes through ModelScope's own
`pipeline(Tasks.text_classification, model=...)`, so the embedded directory and the real
hub StructBERT take the same path. Prediction does not call the pipeline per text: its
preprocessor pads every input to `sequence_length`, which makes a 20-character review
cost a 128-token forward pass. Instead the batch is tokenized with the pipeline's own
tokenizer, sorted by length, cut into buckets padded only to their longest member, and
run through the pipeline's own model (for StructBERT, its last layer for [CLS] only, the
one position the classifier reads); a test checks the scores equal the plain pipeline
call's.

A model that cannot load raises `ModelLoadError` with `cause` one of missing, corrupt,
import, memory and a message that names the fix; the worker turns it into exit code 4.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiguard.errors import ModelLoadError
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import load as load_settings
from sentiguard.settings import project_path

if TYPE_CHECKING:
    import torch

    from sentiguard.settings import Settings

POSITIVE_LABELS = frozenset({"正面", "positive", "pos", "label_1", "1"})
NEGATIVE_LABELS = frozenset({"负面", "negative", "neg", "label_0", "0"})
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "sentencepiece.bpe.model", "spiece.model")
HUB_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
# The fixed cost of one forward pass, in padded tokens: measured on the embedded model
# with one torch thread, a pass costs ~1.5 ms plus ~0.004 ms per token. Buckets trade
# this overhead against padding short reviews up to the length of a long one.
FORWARD_OVERHEAD_TOKENS = 256

FIX_RETRAIN = (
    "restore it with `git checkout -- models/primary` or rebuild it with "
    "`sentiguard train primary`, or set primary.model to another model directory or hub id"
)
FIX_INSTALL = "reinstall the dependencies with `make install` (pip install -r requirements.lock)"
FIX_MEMORY = (
    "give the worker more memory (or raise watchdog.memory_limit_mb and the container "
    "limit), or set primary.model to a smaller model"
)


@dataclass(frozen=True)
class Prediction:
    """One text's answer: probability of positive, and whether the text was cut to fit."""

    p_positive: float
    truncated: bool


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: a local directory, or a hub id (never both)."""

    name: str  # as configured: "models/primary" or "damo/nlp_structbert_..."
    local_dir: Path | None
    hub_id: str | None


def with_reload_override(settings: Settings) -> Settings:
    """The settings a worker serves with: a model chosen by `sentiguard reload` wins."""
    try:
        model = RunDir(settings).reload_model.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return settings
    return load_settings(base=settings, overrides={"primary.model": model}) if model else settings


def resolve_source(settings: Settings) -> ModelSource:
    """A setting naming an existing directory is local and never touches the hub.

    Anything else that looks like "owner/name" is a hub id. ModelScope itself treats a
    relative path such as "models/primary" as a hub id too (one slash), so the worker
    always hands it an absolute path.
    """
    name = settings.primary.model
    path = project_path(name)
    if path.exists() or Path(name).is_absolute() or not HUB_ID.match(name):
        return ModelSource(name, path, None)
    return ModelSource(name, None, name)


def p_positive_from_output(output: dict[str, Any]) -> float:
    """Map a pipeline's `{'labels': [...], 'scores': [...]}` to the probability of positive.

    Accepts "正面"/"负面" (the hub model) and positive/negative, LABEL_1/LABEL_0, 1/0 ids.
    """
    scores = dict(zip((str(x).lower() for x in output["labels"]), output["scores"], strict=True))
    for label, score in scores.items():
        if label in POSITIVE_LABELS:
            return float(score)
    for label, score in scores.items():
        if label in NEGATIVE_LABELS:
            return 1.0 - float(score)
    raise ValueError(f"labels {output['labels']!r} name neither a positive nor a negative class")


def positive_index(id2label: dict[Any, Any]) -> int:
    """The logit index of the positive class, from a config's id2label."""
    for index, label in id2label.items():
        if str(label).lower() in POSITIVE_LABELS:
            return int(index)
    if len(id2label) == 2:
        for index, label in id2label.items():
            if str(label).lower() in NEGATIVE_LABELS:
                return 1 - int(index)
    raise ModelLoadError(
        f"the model's labels {id2label!r} name no positive class. Fix: set id2label in its "
        f"config.json to {{'0': '负面', '1': '正面'}} (or negative/positive).",
        "corrupt",
    )


def _hash_into(digest: Any, path: Path) -> None:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def sha256_file(path: Path) -> str:
    """sha256 of one file, read in blocks (what manifests record)."""
    digest = hashlib.sha256()
    _hash_into(digest, path)
    return digest.hexdigest()


def weights_sha256(directory: Path) -> str:
    """sha256 over every weight file of the directory, in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        _hash_into(digest, path)
    return digest.hexdigest()


class PrimaryModel:
    """A sequence classifier with batched, length-bucketed inference.

    `predict` may run in several threads at once (the batcher's lanes): the tokenizer,
    whose Rust core refuses concurrent calls ("Already borrowed"), runs under a lock, and
    the forward pass only reads the weights.
    `name` is the model as configured; `version` is "<name>@<12 hex of the weights' sha256>".
    """

    def __init__(
        self,
        *,
        name: str,
        version: str,
        tokenizer: Any,
        forward: Callable[..., Any],
        positive: int,
        sequence_length: int,
        long_text: str,
        max_batch: int,
        pipeline: Any = None,
    ) -> None:
        self.name = name
        self.version = version
        self.tokenizer = tokenizer
        self._forward = forward
        self._positive = positive
        self.sequence_length = sequence_length
        self.long_text = long_text
        self.max_batch = max_batch
        self.pipeline = pipeline  # the ModelScope pipeline, for the one-call-per-text path
        self._tokenizer_lock = threading.Lock()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """One Prediction per text, in input order."""
        import torch

        if not texts:
            return []
        room = self.sequence_length - self.tokenizer.num_special_tokens_to_add()
        # verbose=False: a text longer than the model's limit is expected here (it is
        # windowed or cut below), not worth transformers' warning.
        with self._tokenizer_lock:
            content = self.tokenizer(
                list(texts), add_special_tokens=False, truncation=False, verbose=False
            )
        segments: list[tuple[int, list[int]]] = []  # (text index, token ids with specials)
        truncated: list[bool] = []
        for i, ids in enumerate(content["input_ids"]):
            truncated.append(len(ids) > room)
            for piece in self._pieces(ids, room):
                segments.append((i, self.tokenizer.build_inputs_with_special_tokens(piece)))
        sums = [0.0] * len(texts)
        counts = [0] * len(texts)
        with torch.inference_mode():
            for bucket in self._buckets(sorted(segments, key=lambda s: len(s[1]))):
                probs = self._probabilities([ids for _, ids in bucket])
                for (i, _), p in zip(bucket, probs, strict=True):
                    sums[i] += p
                    counts[i] += 1
        return [Prediction(s / c, t) for s, c, t in zip(sums, counts, truncated, strict=True)]

    def predict_pipeline(self, texts: Sequence[str]) -> list[Prediction]:
        """The plain ModelScope pipeline, one call per text: the reference the batched path
        must equal, and the "Flask wraps pipeline" baseline of bench/primary.py."""
        if self.pipeline is None:
            raise RuntimeError(f"{self.name}: no ModelScope pipeline (backend transformers)")
        room = self.sequence_length - self.tokenizer.num_special_tokens_to_add()
        out = []
        for text in texts:
            n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            out.append(Prediction(p_positive_from_output(self.pipeline(text)), n > room))
        return out

    def _pieces(self, ids: list[int], room: int) -> list[list[int]]:
        if len(ids) <= room or self.long_text == "truncate":
            return [ids[:room]]
        # Half-overlapping windows, the last one flush with the end of the text.
        stride = max(room // 2, 1)
        starts = [*range(0, len(ids) - room, stride), len(ids) - room]
        return [ids[s : s + room] for s in starts]

    def _buckets(self, segments: list[tuple[int, list[int]]]) -> list[list[tuple[int, list[int]]]]:
        """Cut length-sorted segments into the buckets that cost the least to run.

        A bucket costs FORWARD_OVERHEAD_TOKENS plus its size times its longest member
        (everything is padded to that); exact dynamic programming over the sorted
        lengths, each bucket at most `max_batch` segments.
        """
        n = len(segments)
        best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of the first j segments
        cut = [0] * (n + 1)
        for j in range(1, n + 1):
            longest = len(segments[j - 1][1])  # sorted: the last one is the longest
            for i in range(max(0, j - self.max_batch), j):
                cost = best[i] + FORWARD_OVERHEAD_TOKENS + (j - i) * longest
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        buckets = []
        j = n
        while j > 0:
            buckets.append(segments[cut[j] : j])
            j = cut[j]
        return buckets[::-1]

    def _probabilities(self, batch: list[list[int]]) -> list[float]:
        import torch

        longest = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        out = self._forward(
            input_ids=input_ids, attention_mask=mask, token_type_ids=torch.zeros_like(input_ids)
        )
        logits = _logits(out)
        return torch.softmax(logits.float(), dim=-1)[:, self._positive].tolist()


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, dict) or hasattr(out, "keys"):
        return out["logits"]
    return out.logits if hasattr(out, "logits") else out[0]


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


def preflight(settings: Settings) -> ModelSource:
    """Check a local model directory's files before the slow imports; name what is wrong."""
    source = resolve_source(settings)
    if source.local_dir is not None:
        _check_directory(source.local_dir)
    return source


def _quiet_libraries() -> None:
    """Keep ModelScope's INFO chatter and a per-forward transformers warning out of logs.

    ModelScope's get_logger() resets its level on every call, so the level must come
    from its environment variable, read once at its import. transformers warns on every
    StructBERT forward pass that an argument ModelScope passes is deprecated: nothing an
    operator can act on.
    """
    os.environ.setdefault("MODELSCOPE_LOG_LEVEL", str(logging.WARNING))
    warnings.filterwarnings(
        "ignore", message="The `device` argument is deprecated", category=FutureWarning
    )


def batch_lanes(settings: Settings) -> int:
    """primary.batch_lanes, or (0) this worker's share of the CPUs it may run on."""
    lanes: int = settings.primary.batch_lanes
    if lanes:
        return lanes
    return max(1, len(os.sched_getaffinity(0)) // settings.primary.workers)


def load_model(settings: Settings) -> PrimaryModel:
    """Load the configured primary model; raise ModelLoadError naming cause and fix."""
    source = preflight(settings)
    import_backend(settings.primary.backend)
    import torch

    torch.set_num_threads(settings.primary.torch_threads)
    directory = _fetch(source) if source.hub_id else source.local_dir
    assert directory is not None
    if source.hub_id:
        _check_directory(directory)
    try:
        model = _build(settings, source, directory)
    except ModelLoadError:
        raise
    except Exception as e:
        raise classify(e, source.name) from e
    return model


def _fetch(source: ModelSource) -> Path:
    """Download a hub id (ModelScope caches it); only ever called for a hub id."""
    hub = importlib.import_module("modelscope.hub.snapshot_download")
    try:
        return Path(hub.snapshot_download(source.hub_id))
    except Exception as e:
        raise ModelLoadError(
            f"cannot fetch {source.hub_id} from the ModelScope hub: {e}. Fix: let this machine "
            f"reach modelscope.cn, or download it elsewhere and set primary.model to its "
            f'directory, or use the embedded model (primary.model = "models/primary").',
            "missing",
        ) from e


def _check_directory(directory: Path) -> None:
    """Name the missing or damaged file before ModelScope fails with a less direct error."""
    if not directory.is_dir():
        raise ModelLoadError(
            f"model directory {directory} does not exist. Fix: {FIX_RETRAIN}.", "missing"
        )
    for required in ("config.json", "configuration.json"):
        path = directory / required
        if required == "configuration.json" and not path.exists():
            continue  # a plain Hugging Face directory (transformers backend) has none
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ModelLoadError(f"{path} is missing. Fix: {FIX_RETRAIN}.", "missing") from e
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(
                f"{path} is not valid JSON ({e}). Fix: {FIX_RETRAIN}.", "corrupt"
            ) from e
    if not any(p.suffix in WEIGHT_SUFFIXES for p in directory.iterdir()):
        raise ModelLoadError(
            f"{directory} has no weights file (model.safetensors or pytorch_model.bin). "
            f"Fix: {FIX_RETRAIN}.",
            "missing",
        )
    if not any((directory / f).exists() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{directory} has no tokenizer file ({', '.join(TOKENIZER_FILES)}). "
            f"Fix: {FIX_RETRAIN}.",
            "missing",
        )


def _build(settings: Settings, source: ModelSource, directory: Path) -> PrimaryModel:
    seq = settings.primary.sequence_length
    version = f"{source.name}@{weights_sha256(directory)[:12]}"
    common: dict[str, Any] = {
        "name": source.name,
        "version": version,
        "sequence_length": seq,
        "long_text": settings.primary.long_text,
        "max_batch": settings.primary.max_batch_size,
    }
    if settings.primary.backend == "transformers":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        hf = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        return PrimaryModel(
            tokenizer=tokenizer,
            forward=hf,
            positive=positive_index(hf.config.id2label),
            **common,
        )
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    # Always the absolute directory: a hub id was fetched above, a local path stays local.
    pipe = pipeline(Tasks.text_classification, model=str(directory), sequence_length=seq)
    net = pipe.model.eval()  # the pipeline sets eval() on its first call; we may skip that call
    id2label = getattr(pipe, "id2label", None) or net.config.id2label
    return PrimaryModel(
        tokenizer=_fast_twin(pipe.preprocessor.nlp_tokenizer.tokenizer, directory),
        forward=_last_layer_on_cls(net) or net,
        positive=positive_index(id2label),
        pipeline=pipe,
        **common,
    )


def _last_layer_on_cls(net: Any) -> Callable[..., Any] | None:
    """StructBERT's forward pass with its last encoder layer run for [CLS] only.

    The classifier reads only the final state of [CLS] (pooler, then classifier), so of
    the last layer only that position's query, attention output and feed-forward matter;
    keys and values still come from every position (the layer's own cross-attention path
    does exactly that). The arithmetic for [CLS] is the full pass's (a test checks the
    scores equal the pipeline's); on the embedded 2-layer model it skips ~40 % of the
    multiply-adds. Other models (decoders, relative positions, other classes) run whole.
    """
    bert = getattr(net, "bert", None)
    if (
        type(net).__name__ != "SbertForSequenceClassification"
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
        return {"logits": net.classifier(net.dropout(bert.pooler(final)))}

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
