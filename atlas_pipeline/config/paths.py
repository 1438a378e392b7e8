"""Where configuration lives: ``ATLAS_CONFIG``; else the data home's own ``config/`` folder
(``$ATLAS_HOME/config``, which ``atlas demo`` writes); else the checkout's ``config/`` folder.

A data home that carries its config keeps the two together: after ``atlas demo`` every command and
``atlas ui`` use the demo's exchange and backtests with no variable to set, and a home made for
real exchanges never picks up the demo's. Every command prints the folder it uses
(``describe_config_dir``), so the CLI and the UI cannot silently disagree.

(The data root, ``ATLAS_HOME``, belongs to ``CandleStore``; its default is repeated here.)"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


CONFIG_ENV = "ATLAS_CONFIG"


def home_config_dir() -> Path | None:
    """``$ATLAS_HOME/config`` (default home ``~/.atlas``) for a local data home; None for a URL."""
    root = os.environ.get("ATLAS_HOME") or "~/.atlas"
    return None if "://" in root else Path(root).expanduser() / "config"


def config_dir() -> Path:
    """``$ATLAS_CONFIG`` if set; else ``$ATLAS_HOME/config`` if it is a folder; else the
    checkout's ``config/``; else ``./config``."""
    return _config_dir_and_reason()[0]


def describe_config_dir() -> str:
    """The config folder and why it was chosen, for the line every command prints at start."""
    folder, reason = _config_dir_and_reason()
    return f"{folder} ({reason})"


def _config_dir_and_reason() -> tuple[Path, str]:
    if env := os.environ.get(CONFIG_ENV):
        return Path(env).expanduser(), f"${CONFIG_ENV}"
    home = home_config_dir()
    if home is not None and home.is_dir():
        return home, "the data home's config; set ATLAS_CONFIG to use another"
    shipped = REPO_ROOT / "config"
    if shipped.is_dir():
        return shipped, "the checkout's config; no $ATLAS_HOME/config"
    return Path.cwd() / "config", "./config; no $ATLAS_HOME/config"


def strategies_dir() -> Path:
    """``$ATLAS_STRATEGIES`` if set; else the checkout's ``strategies/``; else ``./strategies``."""
    if env := os.environ.get("ATLAS_STRATEGIES"):
        return Path(env).expanduser()
    shipped = REPO_ROOT / "strategies"
    return shipped if shipped.is_dir() else Path.cwd() / "strategies"
