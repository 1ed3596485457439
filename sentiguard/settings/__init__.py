"""Resolved settings: defaults < TOML file < environment < command line, typed per section.

Every setting is declared once, in `sentiguard.settings.schema` (one dataclass a section).
Values are resolved with this precedence, lowest first:

    defaults < TOML file (--config or SENTIGUARD_CONFIG) < SENTIGUARD_<SECTION>_<KEY> < CLI flags

An unknown key, a wrong type, a value the validator rejects, or settings that do not fit
together (`sentiguard.settings.rules`) raise `SettingsError` naming the key and the fix, so a
bad config stops the start instead of half-working. Read values as typed attributes:
`settings.gateway.port`. `conf/sentiguard.toml` is generated from the declarations
(`python -m sentiguard.settings`); a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import textwrap
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentiguard.errors import SettingsError
from sentiguard.settings.rules import refuse_failures
from sentiguard.settings.schema import (
    ENV_PREFIX,
    ROOT,
    SECTIONS,
    Settings,
    Validator,
    env_name,
    project_path,
)

__all__ = [
    "BY_NAME", "ROOT", "SETTINGS", "Setting", "Settings", "SettingsError", "load", "project_path",
]  # fmt: skip

CONFIG_ENV = "SENTIGUARD_CONFIG"
# SENTIGUARD_* variables that are not settings: the config file, the developer cache of
# the base-size stand-in model (sentiguard.training.standin), which no service reads, and
# the training corpus' path (sentiguard.data.SHOPPING_ENV) that train and eval read.
NOT_SETTINGS = frozenset({CONFIG_ENV, "SENTIGUARD_STANDIN_DIR", "SENTIGUARD_SHOPPING_CORPUS"})


@dataclass(frozen=True)
class Setting:
    """One declared setting, as the loader and the generated docs see it."""

    section: str
    key: str
    type: type
    default: Any
    help: str
    validator: Validator | None = None

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return env_name(self.section, self.key)

    @property
    def kind(self) -> Any:
        """The number type of an `int | str` setting (a number or a word such as "auto")."""
        args = typing.get_args(self.type)
        return next((a for a in args if a is not str), str) if args else self.type

    @property
    def type_name(self) -> str:
        if typing.get_args(self.type):
            return f'{self.kind.__name__} or "{self.default}"'
        return self.type.__name__

    def coerce(self, raw: Any, source: str) -> Any:
        """Turn a TOML or environment value into this setting's type, or fail with a hint.

        An `int | str` setting takes a number or one word, which its validator names."""
        value = raw
        kind = self.kind
        if isinstance(raw, str) and kind is not str:
            parsed = _parse_text(raw, kind)
            value = raw.strip() if parsed is None and kind is not self.type else parsed
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (
            value is None
            or not isinstance(value, self.type)
            or (kind is int and isinstance(value, bool))
        ):
            raise SettingsError(
                f"{self.name} = {raw!r} (from {source}) is not a {self.type_name}. "
                f"Hint: set it to a {self.type_name} like {self.default!r}, or remove it "
                f"to use the default."
            )
        if self.validator is not None:
            problem = self.validator(value)
            if problem:
                raise SettingsError(
                    f"{self.name} = {value!r} (from {source}) {problem}. "
                    f"Hint: the default is {self.default!r}."
                )
        return value


def _parse_text(raw: str, kind: type) -> Any:
    text = raw.strip()
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return None
    try:
        return kind(text)
    except ValueError:
        return None


def _declared() -> tuple[Setting, ...]:
    found = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            found.append(
                Setting(
                    section, f.name, hints[f.name], f.default, f.metadata["help"],
                    f.metadata["validator"],
                )
            )  # fmt: skip
    return tuple(found)


SETTINGS: tuple[Setting, ...] = _declared()
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise SettingsError(
            f"config file {path} does not exist. Hint: pass an existing file with --config "
            f"or {CONFIG_ENV}, or copy conf/sentiguard.toml."
        ) from e
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(
            f"config file {path} is not valid TOML: {e}. Hint: fix that line."
        ) from e


def _flatten(doc: Mapping[str, Any], source: str) -> Iterable[tuple[str, Any]]:
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise SettingsError(
                f"{source}: top-level key {section!r} is not a [section]. "
                f"Hint: sections are {', '.join(SECTIONS)}."
            )
        for key, value in table.items():
            yield f"{section}.{key}", value


def _unknown(name: str, source: str) -> SettingsError:
    close = difflib.get_close_matches(name, BY_NAME, n=1, cutoff=0.75)
    hint = f"did you mean {close[0]}?" if close else "see conf/sentiguard.toml for every setting."
    return SettingsError(f"unknown setting {name!r} in {source}. Hint: {hint}")


def load(
    config: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Settings | None = None,
    check: bool = True,
) -> Settings:
    """Resolve every setting: defaults < TOML < environment < overrides (CLI flags).

    With `check` (the default), settings that do not fit together raise the same message
    `sentiguard doctor` prints for them; doctor's own tests pass `check=False` to build them.
    """
    environ = os.environ if environ is None else environ
    if base is not None:
        values, sources = base.as_dict(), dict(base.sources)
    else:
        values = {s.name: s.default for s in SETTINGS}
        sources = {s.name: "default" for s in SETTINGS}
        config = config or environ.get(CONFIG_ENV) or None
        if config:
            path = Path(config)
            for name, raw in _flatten(_read_toml(path), str(path)):
                if name not in BY_NAME:
                    raise _unknown(name, str(path))
                values[name] = BY_NAME[name].coerce(raw, str(path))
                sources[name] = str(path)
        known_env = {s.env: s for s in SETTINGS}
        for var, raw in environ.items():
            if not var.startswith(ENV_PREFIX) or var in NOT_SETTINGS:
                continue
            setting = known_env.get(var)
            if setting is None:
                raise SettingsError(
                    f"unknown environment variable {var}. Hint: variables are "
                    f"SENTIGUARD_<SECTION>_<KEY>, e.g. SENTIGUARD_WATCHDOG_MEMORY_LIMIT_MB; "
                    f"unset it or fix its name."
                )
            values[setting.name] = setting.coerce(raw, f"environment {var}")
            sources[setting.name] = f"environment {var}"
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in BY_NAME:
            raise _unknown(name, "command line")
        values[name] = BY_NAME[name].coerce(raw, "command line")
        sources[name] = "command line"
    settings = Settings.from_values(values, sources)
    if check:
        refuse_failures(settings)
    return settings


def render_toml() -> str:
    """conf/sentiguard.toml: every setting with its default and help, generated from SETTINGS."""
    lines = [
        "# sentiguard settings: every knob, with its default. Generated from",
        "# sentiguard/settings/schema.py by",
        "# `python -m sentiguard.settings > conf/sentiguard.toml`; a test fails when they differ.",
        "#",
        "# Precedence, lowest first: these defaults < this file (--config or SENTIGUARD_CONFIG)",
        "# < environment SENTIGUARD_<SECTION>_<KEY> < command-line flags.",
    ]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for s in (s for s in SETTINGS if s.section == section):
            lines += [f"# {line}" for line in textwrap.wrap(s.help, 86)]
            lines.append(f"# env {s.env}")
            lines.append(f"{s.key} = {_toml_value(s.default)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
