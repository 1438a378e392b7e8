"""One error type for every bad configuration, always naming the file, the key and the value."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration problem a user can fix by editing one file."""

    def __init__(self, file: Path | str, key: str, value: Any, reason: str) -> None:
        self.file = str(file)
        self.key = key
        self.value = value
        self.reason = reason
        where = f"{self.file}: {key}" if key else self.file
        shown = "" if value is _MISSING else f" = {value!r}"
        super().__init__(f"{where}{shown}: {reason}")


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
