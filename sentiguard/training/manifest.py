"""What a model's manifest records about the libraries that built it."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """The installed version of each distribution in `names`, "absent" if not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions
