"""The strategy's indicators, per bar, for the report's price chart (freqtrade's plot-dataframe).

There is nothing to declare: every indicator a strategy creates in ``__init__`` is recorded, with
backtrader's own plot settings (what ``cerebro.plot()`` reads) deciding where it goes:

- ``plotinfo.plot=False`` (or ``plotskip``) leaves it out, e.g. a cross signal
  (``bt.ind.CrossOver(fast, slow, plot=False)``); a line whose ``plotlines.<line>._plotskip`` is
  set is left out too.
- ``plotinfo.subplot=False`` draws it over the candles (moving averages, Bollinger bands are
  so by default); ``subplot=True`` (the default of most other indicators: RSI, ``Highest``) gives
  it its own panel below. Pass ``subplot=False`` to put e.g. a Donchian channel on the price.
  ``plotmaster`` (another recorded indicator, or the data) puts it in that one's panel.
- ``plotinfo.plotname`` names it; otherwise backtrader's label, class and params: ``SMA (20)``.

Only top-level indicators (those the strategy owns) are recorded, not those an indicator builds
inside itself, nor line arithmetic (``self.data.high(-1)``), exactly as ``cerebro.plot()``.

Cost: the values are already in backtrader's line buffers after the run (``runonce`` computes
whole arrays), so recording is one array copy per line after the run and nothing per bar.
"""

from __future__ import annotations

import backtrader as bt
import numpy as np
import pandas as pd

PRICE_PANEL = "price"
"""Panel of the indicators drawn over the candles; any other panel is named by its indicator."""


def record_indicators(strategy: bt.Strategy, first: int, index: pd.DatetimeIndex) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every plotted line of the strategy's indicators over bars ``first..`` (the result's bars),
    as float columns indexed by ``index``, and each column's panel (``PRICE_PANEL`` or the
    indicator's label). An indicator whose buffer does not cover every candle (a different clock,
    e.g. a resampled feed) is left out: its bars would not line up with the candles."""
    bars = first + len(index)
    columns: dict[str, np.ndarray] = {}
    panels: dict[str, str] = {}
    panel_of: dict[int, str] = {}  # id(indicator) -> its panel, for plotmaster
    labels: set[str] = set()
    for indicator in strategy.getindicators():
        info = getattr(indicator, "plotinfo", None)  # line arithmetic has none
        if info is None or not info.plot or info.plotskip:
            continue
        if any(len(indicator.lines[line].array) != bars for line in range(indicator.size())):
            continue
        label = _unique(indicator.plotlabel(), labels)
        labels.add(label)
        master = info.plotmaster
        panel = PRICE_PANEL if not info.subplot else label
        if master is not None and master is not indicator:
            panel = panel_of.get(id(master), PRICE_PANEL)
        panel_of[id(indicator)] = panel
        for line in range(indicator.size()):
            alias = indicator.lines._getlinealias(line)
            style = getattr(indicator.plotlines, alias, None)
            if style is not None and style._get("_plotskip", False):
                continue
            name = label if indicator.size() == 1 else f"{label} {alias}"
            columns[name] = np.frombuffer(indicator.lines[line].array, dtype=np.float64)[first:].copy()
            panels[name] = panel
    return pd.DataFrame(columns, index=index), panels


def _unique(label: str, taken: set[str]) -> str:
    """``label``, or ``label #2``, ``#3``... when two indicators print alike (same class and params)."""
    if label not in taken:
        return label
    n = 2
    while f"{label} #{n}" in taken:
        n += 1
    return f"{label} #{n}"
