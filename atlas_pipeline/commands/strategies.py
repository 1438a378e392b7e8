"""``atlas strategies`` (each strategy: params with defaults, docstring) and ``atlas new-strategy NAME``."""

from __future__ import annotations

import argparse
import inspect
import keyword
import re
import sys
import textwrap
from pathlib import Path

TEMPLATE = '''"""{title}: a template written by `atlas new-strategy {name}`; make it yours."""

from __future__ import annotations

import backtrader as bt

from atlas_pipeline.research.strategy_base import FLAT, LONG, SHORT, AtlasStrategy


class {cls}(AtlasStrategy):
    """Long while the close is above its moving average and the average is rising; else flat
    (or short with ``allow_short``). Replace with your idea, and say why it should work.

    Only look back: ``self.data.close[0]`` is the bar just closed, ``[-1]`` the one before; never
    ``[1]`` or an indicator on a forward-shifted line (``self.data.close(1)``). Every backtest
    runs a blocking lookahead check (docs/walkforward.md) that fails such a strategy.

    Params:
        period (int, default 30): bars in the moving average; >= 2.
        slope_bars (int, default 5): bars over which the average must have risen; >= 1.
        allow_short (bool, default False): short instead of flat when the trend points down.
    """

    params = (("period", 30), ("slope_bars", 5))  # allow_short comes from AtlasStrategy

    def __init__(self) -> None:
        super().__init__()
        if self.p.period < 2 or self.p.slope_bars < 1:
            raise ValueError(f"need period >= 2 and slope_bars >= 1, got period={{self.p.period}} slope_bars={{self.p.slope_bars}}")
        self.average = bt.ind.SMA(self.data.close, period=self.p.period)

    def next(self) -> None:
        # Runs once every indicator has a value (earlier bars are warm-up, not in the results).
        rising = self.average[0] > self.average[-self.p.slope_bars]
        if self.data.close[0] > self.average[0] and rising:
            self.target(LONG)
        elif self.data.close[0] < self.average[0] and not rising:
            self.target(SHORT)  # flat unless allow_short
        else:
            self.target(FLAT)
'''
"""The file ``atlas new-strategy`` writes (``{name}``, ``{cls}``, ``{title}`` filled in)."""


def register(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("strategies", help="list the strategies in strategies/: params with defaults, docstring")
    listing.add_argument("name", nargs="*", help="only these strategies")
    listing.set_defaults(handler=cmd_strategies)

    new = commands.add_parser("new-strategy", help="write a documented strategy template into strategies/")
    new.add_argument("name", help="module name, lower_snake_case, e.g. my_trend")
    new.set_defaults(handler=cmd_new_strategy)


def describe_strategy(name: str, folder: Path | None = None) -> str:
    """Name, file, params with types and defaults, then the class docstring (``StrategyError`` if broken)."""
    from atlas_pipeline.research.strategy_loader import load_strategy, strategy_file, strategy_params

    cls = load_strategy(name, folder)
    params = ", ".join(f"{key}={value!r}" for key, value in strategy_params(cls).items()) or "(none)"
    doc = inspect.cleandoc(cls.__doc__ or "(no docstring)")
    return f"{name}  ({strategy_file(name, folder)}, class {cls.__name__})\n  params: {params}\n{textwrap.indent(doc, '  ')}"


def cmd_strategies(args: argparse.Namespace) -> None:
    from atlas_pipeline.cli import CommandFailed, UsageError
    from atlas_pipeline.config.paths import strategies_dir
    from atlas_pipeline.research.strategy_loader import StrategyError, available_strategies

    folder = strategies_dir()
    known = available_strategies(folder)
    unknown = [name for name in args.name if name not in known]
    if unknown:
        raise UsageError(f"no strategy {unknown[0]!r} in {folder}; available: {', '.join(known) or '(none)'}")
    broken = []
    for index, name in enumerate(args.name or known):
        try:
            text = describe_strategy(name, folder)
        except StrategyError as error:
            text = f"{name}  BROKEN: {str(error).splitlines()[0]}"
            broken.append(name)
        print(("\n" if index else "") + text)
    if not known:
        print(f"no strategies in {folder} (atlas new-strategy NAME writes one)")
    if broken:
        raise CommandFailed(f"{len(broken)} strateg{'y' if len(broken) == 1 else 'ies'} cannot be loaded: {', '.join(broken)}")


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_") if part) or "MyStrategy"


def write_strategy_template(name: str, folder: Path) -> Path:
    """``<folder>/<name>.py`` from ``TEMPLATE``; ``ValueError`` for a bad name or an existing file."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ValueError(f"strategy name {name!r} must be a lower_snake_case module name, e.g. my_trend")
    path = folder / f"{name}.py"
    if path.exists():
        raise ValueError(f"{path} exists already; pick another name")
    folder.mkdir(parents=True, exist_ok=True)
    text = TEMPLATE.format(name=name, cls=class_name(name), title=name.replace("_", " ").capitalize())
    tmp = folder / f".{name}.py.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def cmd_new_strategy(args: argparse.Namespace) -> None:
    from atlas_pipeline.cli import UsageError
    from atlas_pipeline.config.paths import strategies_dir

    try:
        path = write_strategy_template(args.name, strategies_dir())
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(path)
    print(f"atlas new-strategy: wrote {path}; try it: atlas backtest --strategy {args.name} --params period=20 "
          "--symbol BTC/USDT --timeframe 1h --days 60", file=sys.stderr)
