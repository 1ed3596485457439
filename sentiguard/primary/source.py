"""Where the primary model comes from, and whether its files are whole.

`resolve_source(settings)` says local directory or hub id; `with_reload_override` lets a
model chosen by `sentiguard reload` win over the config; `preflight` names a missing or
damaged file before the slow imports; `fetch` downloads a hub id. The weights' sha256
(`weights_sha256`, `sha256_file`) names a model's version and its training manifest.
Every failure is a `ModelLoadError` whose message names the fix.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiguard.errors import RETRAIN_PRIMARY, ModelLoadError
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import load as load_settings
from sentiguard.settings import project_path

if TYPE_CHECKING:
    from sentiguard.settings import Settings

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "sentencepiece.bpe.model", "spiece.model")
HUB_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")

FIX_RETRAIN = (
    f"restore it with `git checkout -- models/primary` or rebuild it with `{RETRAIN_PRIMARY}` "
    "(README, Models), or set primary.model to another model directory or hub id"
)


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


def preflight(settings: Settings) -> ModelSource:
    """Check a local model directory's files before the slow imports; name what is wrong."""
    source = resolve_source(settings)
    if source.local_dir is not None:
        check_directory(source.local_dir)
    return source


def fetch(source: ModelSource) -> Path:
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


def check_directory(directory: Path) -> None:
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
