"""Reading YAML files and turning pydantic's errors into ``ConfigError``s a user can act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from atlas_pipeline.config.errors import MISSING, ConfigError, FieldError


def read_yaml(path: Path) -> Any:
    """Parse one YAML file; a missing file or a syntax error names the file (and line)."""
    if not path.is_file():
        raise ConfigError(path, "", MISSING, "file not found (set ATLAS_CONFIG to another config folder)")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(path, where, MISSING, f"not valid YAML: {getattr(error, 'problem', error)}") from None


def read_section(path: Path, section: str) -> dict[str, Any]:
    """The mapping under ``section``, the file's only top-level key; each entry must be a mapping."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(path, "", raw, f"expected a mapping with a '{section}' key")
    unknown = sorted(set(raw) - {section})
    if unknown:
        raise ConfigError(path, unknown[0], raw[unknown[0]], f"unknown top-level key; expected only '{section}'")
    entries = raw.get(section, MISSING)
    if not isinstance(entries, dict):
        raise ConfigError(path, section, entries, "needs a mapping of name -> settings")
    for name, settings in entries.items():
        if not isinstance(settings, dict):
            raise ConfigError(path, f"{section}.{name}", settings, "needs a mapping of settings")
    return entries


def validation_error_to_config_error(
    error: ValidationError, path: Path, prefix: str, raw: dict[str, Any]
) -> ConfigError:
    """The first problem of a pydantic error, as file + dotted key + offending value + reason."""
    first = error.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        return ConfigError(path, f"{prefix}.{cause.key}", cause.value, cause.reason)
    loc = [part for part in first["loc"]]
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}"
    value = _lookup(raw, loc)
    reason = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        reason = "unknown key (check the spelling; see docs/configuration.md)"
    elif first["type"] == "missing":
        reason = "is required"
    return ConfigError(path, key, value, reason)


def _lookup(raw: Any, loc: list[Any]) -> Any:
    value = raw
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return MISSING
    return value
