"""Reading YAML files and turning pydantic's errors into ``ConfigError``s a user can act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from atlas_pipeline.config.errors import MISSING, ConfigError, FieldError

MAX_YAML_NODES = 100_000
"""Most values (scalars, lists, mappings) a config file may hold once its aliases are expanded.
Config files hold hundreds; a "billion laughs" document (aliases of aliases) holds billions in a
few hundred bytes, which anything walking the values (validation, error messages) would expand."""


def read_yaml(path: Path) -> Any:
    """Parse one YAML file; a missing file or a syntax error names the file (and line).

    Like ``yaml.safe_load``, but aliases may not expand the document past ``MAX_YAML_NODES`` values,
    nor refer to a value containing themselves.
    """
    if not path.is_file():
        raise ConfigError(path, "", MISSING, "file not found (set ATLAS_CONFIG to another config folder)")
    try:
        return _safe_load_limited(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(path, where, MISSING, f"not valid YAML: {getattr(error, 'problem', error)}") from None
    except _TooLarge as error:
        raise ConfigError(path, f"line {error.line}", MISSING, error.reason) from None
    except RecursionError:
        raise ConfigError(path, "", MISSING, "not valid YAML: nested too deeply") from None


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node, reason: str) -> None:
        super().__init__(reason)
        self.line, self.reason = node.start_mark.line + 1, reason


def _safe_load_limited(text: str) -> Any:
    """``yaml.safe_load``, checking the composed document's expanded size before building it."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the values ``root`` stands for with every alias expanded, without expanding any: an
    alias is the very node it names, so each node's count is computed once (depth-first, no
    recursion). Raises ``_TooLarge`` past ``MAX_YAML_NODES`` or on an alias inside its own anchor."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()  # nodes entered and not yet counted: the current node's ancestors
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_counted = stack.pop()
        if children_counted:
            on_path.discard(id(node))
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_YAML_NODES:
                raise _TooLarge(
                    node,
                    f"YAML aliases expand this value to more than {MAX_YAML_NODES:,} values "
                    "(a 'billion laughs' document?); write the values out, or use fewer aliases",
                )
            sizes[id(node)] = size
            continue
        if id(node) in sizes:
            continue
        on_path.add(id(node))
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise _TooLarge(child, "a YAML alias refers to a value containing itself (recursive alias)")
            if id(child) not in sizes:
                stack.append((child, False))


def read_section(path: Path, section: str, siblings: tuple[str, ...] = ()) -> dict[str, Any]:
    """The mapping under ``section``; each entry must be a mapping. The file's other top-level keys
    may only be ``siblings`` (read by their own loader); with one of them present, ``section`` may
    be absent (no entries)."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(path, "", raw, f"expected a mapping with a '{section}' key")
    unknown = sorted(set(raw) - {section, *siblings}, key=str)
    if unknown:
        expected = " or ".join(f"'{key}'" for key in (section, *siblings))
        raise ConfigError(path, unknown[0], raw[unknown[0]], f"unknown top-level key; expected only {expected}")
    if section not in raw and set(raw) & set(siblings):
        return {}
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
