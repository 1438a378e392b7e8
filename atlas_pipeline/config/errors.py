"""One error type for every bad configuration, always naming the file, the key and the value.

Values are shown cut short (``shown``): a config value can be any size, and an error line must
stay readable (and cheap: a YAML document full of aliases once made a 312 MB error line).
"""

from __future__ import annotations

import reprlib
from itertools import islice
from pathlib import Path
from typing import Any

MAX_SHOWN_CHARS = 200
"""Longest value, and key, an error message shows; the whole value stays on ``ConfigError.value``."""
MAX_REASON_CHARS = 500


class _ShortRepr(reprlib.Repr):
    """``reprlib``'s bounded repr, keeping a mapping's keys in the file's order (not sorted)."""

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in islice(x.items(), self.maxdict)]
        return "{" + ", ".join(items + (["..."] if len(x) > self.maxdict else [])) + "}"


_REPR = _ShortRepr()  # looks at most a few items and levels deep, whatever the value's size
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = _REPR.maxdict = 10
_REPR.maxstring = _REPR.maxother = 120
_REPR.maxlong = 60


def shown(value: Any) -> str:
    """``repr(value)``, cut short: at most a few items of a collection, levels deep, characters."""
    return _cut(_REPR.repr(value), MAX_SHOWN_CHARS)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class ConfigError(ValueError):
    """A configuration problem a user can fix by editing one file."""

    def __init__(self, file: Path | str, key: str, value: Any, reason: str) -> None:
        self.file = str(file)
        self.key = key
        self.value = value
        self.reason = reason
        where = f"{self.file}: {_cut(key, MAX_SHOWN_CHARS)}" if key else self.file
        value_shown = "" if value is _MISSING else f" = {shown(value)}"
        super().__init__(f"{where}{value_shown}: {_cut(reason, MAX_REASON_CHARS)}")


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()
MISSING = _MISSING


class FieldError(ValueError):
    """Raised inside a pydantic model validator to point at one field (``key``) of the model."""

    def __init__(self, key: str, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.key, self.value, self.reason = key, value, reason
