"""The model directories: complete, hashes equal to the manifest, JSON files parse."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sentiguard import supervisord
from sentiguard.doctor.report import Result, fail, ok, warn
from sentiguard.settings import ROOT, Settings

# --- model files ------------------------------------------------------------------------

# Files a ModelScope local directory needs besides the weights the manifest names.
PRIMARY_FILES = ("configuration.json", "config.json", "vocab.txt")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_files(manifest: dict[str, Any]) -> dict[str, str]:
    """{relative path: sha256} of the files a manifest vouches for.

    The trainers write `"weights": {"file", "sha256", ...}` (and may add
    `"files": {path: sha256 | {"sha256": ...}}`); both shapes are read.
    """
    found: dict[str, str] = {}
    for key in ("weights", "model", "artifact"):
        entry = manifest.get(key)
        if isinstance(entry, dict) and "sha256" in entry:
            name = entry.get("file") or entry.get("path")
            if isinstance(name, str):
                found[name] = str(entry["sha256"])
    files = manifest.get("files")
    if isinstance(files, dict):
        for name, value in files.items():
            sha = value.get("sha256") if isinstance(value, dict) else value
            if isinstance(sha, str):
                found[name] = sha
    return found


def looks_like_hub_id(value: str) -> bool:
    """`owner/name` whose owner is not a local directory: `models/primary` is a path."""
    parts = value.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not value.startswith((".", "~"))
        and not (ROOT / parts[0]).is_dir()
    )


def check_model(
    check: str,
    directory: Path,
    setting: str,
    required: Sequence[str] = (),
    retrain: str = "",
    hub_id: str | None = None,
) -> Result:
    """Complete (required files + everything the manifest lists, hashes equal) and
    loadable as far as files tell (every JSON file parses)."""
    rebuild = f"restore it (git checkout -- {directory.name}) or rebuild it: {retrain}"
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
        if have != want:
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
    listed = ", ".join(sorted(hashed))
    return ok(check, f"{directory}: complete, sha256 of {listed} match the manifest")


def check_models(settings: Settings) -> list[Result]:
    primary_value = str(settings.get("primary.model"))
    reloaded = supervisord.run_dir(settings) / "primary_model"
    label = "primary model"
    if reloaded.is_file():  # `sentiguard reload` moved the workers to this model
        primary_value = reloaded.read_text(encoding="utf-8").strip() or primary_value
        label = "primary model*"
    primary_dir = Path(primary_value)
    if not primary_dir.is_absolute():
        primary_dir = ROOT / primary_dir
    hub = primary_value if not primary_dir.exists() and looks_like_hub_id(primary_value) else None
    return [
        check_model(
            "fallback model",
            settings.path("fallback.model"),
            "fallback.model",
            retrain="sentiguard train fallback",
        ),
        check_model(
            label,
            primary_dir,
            "primary.model",
            required=PRIMARY_FILES,
            retrain="sentiguard train primary",
            hub_id=hub,
        ),
    ]
