"""The model directories: complete, hashes equal to the manifest, JSON files parse."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sentiguard.doctor.report import Result, fail, ok, warn
from sentiguard.errors import RETRAIN_FALLBACK, RETRAIN_PRIMARY
from sentiguard.primary.source import resolve_source, sha256_file, with_reload_override
from sentiguard.settings import ROOT, Settings

# --- model files ------------------------------------------------------------------------

# Files a ModelScope local directory needs besides the weights the manifest names.
PRIMARY_FILES = ("configuration.json", "config.json", "vocab.txt")


def manifest_files(manifest: dict[str, Any]) -> dict[str, str]:
    """{relative path: sha256 (or a prefix of at least 12 hex)} of the files a manifest
    vouches for, in the shapes the trainers write:

    - primary: `"weights": {"file", "sha256", ...}`, optionally `"files": {path: sha256 |
      {"sha256": ...}}`;
    - fallback: `"model_file"` with `"model_sha256"`, or else the hash prefix in its
      `"version"` (`<dir>@<first 12 hex of the file's sha256>`).
    """
    found: dict[str, str] = {}
    entry = manifest.get("weights")
    if isinstance(entry, dict) and isinstance(entry.get("file"), str) and "sha256" in entry:
        found[entry["file"]] = str(entry["sha256"])
    model_file = manifest.get("model_file")
    if isinstance(model_file, str):
        sha = manifest.get("model_sha256")
        version = str(manifest.get("version", ""))
        if not isinstance(sha, str) and "@" in version:
            sha = version.rsplit("@", 1)[1]
        if isinstance(sha, str) and len(sha) >= 12:
            found[model_file] = sha
    files = manifest.get("files")
    if isinstance(files, dict):
        for name, value in files.items():
            sha = value.get("sha256") if isinstance(value, dict) else value
            if isinstance(sha, str):
                found[name] = sha
    return found


def structbert_problem(directory: Path) -> str | None:
    """What would stop ModelScope loading this StructBERT directory, found without torch:
    the safetensors header and size, the embedding shape against config.json, the vocabulary
    size against vocab.txt (which the manifest does not hash), the two labels."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        vocab_lines = len((directory / "vocab.txt").read_text(encoding="utf-8").splitlines())
        configuration = json.loads((directory / "configuration.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return str(e)
    if not configuration.get("task") or not configuration.get("model", {}).get("type"):
        return "configuration.json lacks task or model.type"
    if len(config.get("id2label", {})) != 2:
        return f"config.json has {len(config.get('id2label', {}))} labels, not 2"
    if config.get("vocab_size") != vocab_lines:
        return (
            f"config.json vocab_size {config.get('vocab_size')} != {vocab_lines} lines of vocab.txt"
        )
    weights = directory / "model.safetensors"
    if not weights.is_file():
        return None  # a pytorch_model.bin: nothing to read without torch
    with weights.open("rb") as f:
        try:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        except (struct.error, ValueError) as e:
            return f"model.safetensors header unreadable: {e}"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + size + end != weights.stat().st_size:
        return (
            f"model.safetensors is {weights.stat().st_size} bytes, its header says {8 + size + end}"
        )
    embedding = [t["shape"] for k, t in header.items() if k.endswith("word_embeddings.weight")]
    want = [config.get("vocab_size"), config.get("hidden_size")]
    if embedding and embedding[0] != want:
        return f"word embeddings are {embedding[0]}, config.json says {want}"
    return None


def fallback_problem(directory: Path) -> str | None:
    """Load the fallback model for real (well under a second) and score one sentence."""
    try:
        from sentiguard.fallback.model import FallbackModel

        p = FallbackModel.load(directory).predict_proba(["这家店的菜很好吃"])
    except Exception as e:  # whatever stops the load (corrupt pickle, import error) is the finding
        return f"{type(e).__name__}: {e}"
    if len(p) != 1 or not 0.0 <= p[0] <= 1.0:
        return f"predict_proba gave {p!r}"
    return None


def check_model(
    check: str,
    directory: Path,
    setting: str,
    required: Sequence[str] = (),
    retrain: str = "",
    hub_id: str | None = None,
    consistency: Callable[[Path], str | None] | None = None,
) -> Result:
    """Complete (required files + everything the manifest lists, hashes equal) and
    loadable as far as files tell (every JSON file parses, `consistency` finds nothing)."""
    shown = directory.relative_to(ROOT) if directory.is_relative_to(ROOT) else directory
    rebuild = f"restore it (git checkout -- {shown}) or rebuild it: {retrain}"
    if not directory.is_dir():
        if hub_id is not None:
            return warn(
                check,
                f"{hub_id} is a ModelScope hub id: downloaded when a worker starts",
                f"make sure this host reaches the hub, or set {setting} to a local directory",
            )
        return fail(check, f"{directory} does not exist", f"set {setting}, or {retrain}")
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return fail(check, f"{directory}/manifest.json is missing", rebuild)
    except (OSError, ValueError) as e:
        return fail(check, f"{directory}/manifest.json does not parse: {e}", rebuild)
    hashed = manifest_files(manifest)
    if not hashed:
        return fail(check, f"{directory}/manifest.json lists no file hashes", rebuild)
    for name in (*required, *hashed):
        if not (directory / name).is_file():
            return fail(check, f"{directory}/{name} is missing", rebuild)
    for name, want in hashed.items():
        try:
            have = sha256_file(directory / name)
        except OSError as e:
            return fail(
                check,
                f"{directory}/{name} cannot be read: {e.strerror or e}",
                f"let the service's user read it: chmod -R a+rX {directory}",
            )
        if not have.startswith(want.lower()):
            return fail(
                check,
                f"{directory}/{name}: sha256 differs from manifest.json (corrupt or replaced)",
                rebuild,
            )
    for path in sorted(directory.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            return fail(check, f"{path} does not parse: {e}", rebuild)
    problem = consistency(directory) if consistency is not None else None
    if problem:
        return fail(check, f"{directory} would not load: {problem}", rebuild)
    listed = ", ".join(sorted(hashed))
    return ok(check, f"{directory}: complete, sha256 of {listed} match the manifest")


def check_models(settings: Settings) -> list[Result]:
    """Both models, the primary as a worker would resolve it: `sentiguard reload`'s
    `<run_dir>/primary_model` over primary.model, a local directory before a hub id."""
    serving = with_reload_override(settings)
    label = "primary (reload)" if serving is not settings else "primary model"
    settings = serving
    source = resolve_source(settings)
    primary_dir = source.local_dir or settings.primary.model_dir
    return [
        check_model(
            "fallback model",
            settings.fallback.model_dir,
            "fallback.model",
            retrain=RETRAIN_FALLBACK,
            consistency=fallback_problem,
        ),
        check_model(
            label,
            primary_dir,
            "primary.model",
            required=PRIMARY_FILES,
            retrain=RETRAIN_PRIMARY,
            hub_id=source.hub_id,
            consistency=structbert_problem,
        ),
    ]
