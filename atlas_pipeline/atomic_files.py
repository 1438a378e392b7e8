"""Files replaced whole or not at all: write a temp file beside the target, fsync, rename.

A reader (or a crash) never sees half a file: the candle store's Parquet files, the exchange
metadata, the ad-hoc backtests file and the HTML reports are all written this way.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def replace_file(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temp file in ``path``'s folder (created if missing), then rename it
    over ``path``; on any failure the temp file is removed and ``path`` is untouched."""
    folder, name = os.path.split(os.fspath(path))
    os.makedirs(folder or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder or ".", prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # so a power cut after the rename cannot expose an empty file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` as UTF-8 at ``path``, replaced whole (``replace_file``)."""
    replace_file(path, lambda f: f.write(text.encode("utf-8")))
