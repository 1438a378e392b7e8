"""Where configuration lives: ``ATLAS_CONFIG``, else the checkout's ``config/`` folder.

(The data root, ``ATLAS_HOME``, belongs to ``CandleStore``.)"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def config_dir() -> Path:
    """``$ATLAS_CONFIG`` if set; else the checkout's ``config/``; else ``./config``."""
    if env := os.environ.get("ATLAS_CONFIG"):
        return Path(env).expanduser()
    shipped = REPO_ROOT / "config"
    return shipped if shipped.is_dir() else Path.cwd() / "config"


def strategies_dir() -> Path:
    """``$ATLAS_STRATEGIES`` if set; else the checkout's ``strategies/``; else ``./strategies``."""
    if env := os.environ.get("ATLAS_STRATEGIES"):
        return Path(env).expanduser()
    shipped = REPO_ROOT / "strategies"
    return shipped if shipped.is_dir() else Path.cwd() / "strategies"
