"""Find, import and check user strategies: one backtrader ``Strategy`` per file in a folder.

The folder is ``$ATLAS_STRATEGIES``, else the checkout's ``strategies/`` (``config.paths``). A
strategy is named by its module name (``sma_crossover`` -> ``strategies/sma_crossover.py``) and
imported by file path on every load, so an edited file is picked up by the next run in a
long-lived process (the Dagster code server) without a restart.

Everything that can go wrong with user code (missing file, syntax or import error, no or several
strategy classes, unknown or mistyped params, an exception while it runs) is a ``StrategyError``
whose message names the strategy and, when the strategy's own code raised, shows the traceback
lines from its file, so a config author sees their bug and not backtrader's internals.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import backtrader as bt

from atlas_pipeline.config.paths import strategies_dir as default_strategies_dir


class StrategyError(Exception):
    """A strategy could not be loaded, configured or run; the message says which and why."""

    def __init__(self, strategy: str, message: str) -> None:
        super().__init__(f"strategy {strategy!r}: {message}")
        self.strategy = strategy
        self.detail = message

    def __reduce__(self):  # picklable, so it crosses from a worker process unchanged
        return type(self), (self.strategy, self.detail)


def _folder(strategies_dir: Path | str | None) -> Path:
    return Path(strategies_dir) if strategies_dir is not None else default_strategies_dir()


def available_strategies(strategies_dir: Path | str | None = None) -> list[str]:
    """Module names of the strategy files in the folder (``_``-prefixed files are helpers)."""
    folder = _folder(strategies_dir)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))


def strategy_file(name: str, strategies_dir: Path | str | None = None) -> Path:
    return _folder(strategies_dir) / f"{name}.py"


def load_strategy(name: str, strategies_dir: Path | str | None = None) -> type[bt.Strategy]:
    """The one ``bt.Strategy`` subclass defined in ``<strategies_dir>/<name>.py``."""
    path = strategy_file(name, strategies_dir)
    if not name.isidentifier() or not path.is_file():
        known = available_strategies(strategies_dir)
        raise StrategyError(name, f"no strategy file {path}; available: {', '.join(known) or '(none)'}")
    module_name = f"atlas_strategies.{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses, pickling and typing look classes up here
    try:
        spec.loader.exec_module(module)
    except BaseException as error:  # noqa: BLE001 - any failure of user code is the strategy's error
        sys.modules.pop(module_name, None)
        raise strategy_failure(name, path, error, "failed to import") from error
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, bt.Strategy) and value.__module__ == module_name
    ]
    if len(found) != 1:
        names = ", ".join(sorted(c.__name__ for c in found)) or "none"
        raise StrategyError(name, f"{path} must define exactly one backtrader Strategy subclass (found: {names})")
    return found[0]


def strategy_params(cls: type[bt.Strategy]) -> dict[str, Any]:
    """The strategy's params (its own and inherited) with their defaults, in declaration order."""
    return dict(cls.params._getitems())


def validate_params(name: str, cls: type[bt.Strategy], params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` checked against the strategy's: known names, and values of the default's type.

    A param's type is its default's (``bool``, ``int``, ``float``, ``str``); an int is accepted
    where a float is expected, a bool is never taken for a number, and a ``None`` default takes
    anything. Range checks (``fast < slow``) belong to the strategy's ``__init__``.
    """
    known = strategy_params(cls)
    unknown = sorted(set(params) - set(known))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "(none)"
        raise StrategyError(name, f"unknown param(s) {', '.join(unknown)}; known params: {listing}")
    checked: dict[str, Any] = {}
    for key, value in params.items():
        default = known[key]
        if not _same_type(default, value):
            raise StrategyError(
                name, f"param {key}={value!r} must be {type(default).__name__} like its default {default!r}"
            )
        checked[key] = float(value) if isinstance(default, float) else value
    return checked


def _same_type(default: Any, value: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def strategy_failure(name: str, path: Path, error: BaseException, doing: str) -> StrategyError:
    """A ``StrategyError`` carrying the traceback lines that lie in the strategy's file.

    Frames in backtrader or Atlas are left out: they say nothing to the strategy's author. A
    syntax error has no frame in the file, so its location (file, line, caret) is shown instead.
    When no frame is in the file (backtrader raised while computing the strategy's indicators),
    the innermost frames are shown.
    """
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if Path(f.filename).resolve() == path.resolve()]
    if isinstance(error, SyntaxError):
        text = "".join(traceback.format_exception_only(error))
    else:
        shown = own or frames[-3:]
        where = "strategy traceback" if own else "traceback (innermost frames; none in the strategy file)"
        text = (
            f"{where} (most recent call last):\n"
            + "".join(traceback.format_list(shown))
            + "".join(traceback.format_exception_only(error))
        )
    return StrategyError(name, f"{doing} ({path}): {type(error).__name__}: {error}\n{text.rstrip()}")
