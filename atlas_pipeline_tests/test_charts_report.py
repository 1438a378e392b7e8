"""Charts are valid PNGs drawn headless (also after backtrader switched pyplot to TkAgg), fast on
long series, keep the drawdown's minimum when downsampling (the HTML report: test_report.py)."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd

from atlas_pipeline.research.charts import downsample, equity_drawdown_chart, png_markdown, trades_chart
from atlas_pipeline.research.metrics import drawdown_series
from atlas_pipeline.research.results import TRADE_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def market(bars: int, seed: int = 3) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    times = pd.date_range("2024-01-01", periods=bars, freq="1min", tz="UTC", name="time")
    close = pd.Series(100 * np.exp(np.cumsum(rng.normal(0, 0.001, bars))), index=times)
    in_market = (np.arange(bars) // 500) % 2 == 1
    step = close.pct_change().fillna(0).to_numpy() * np.r_[False, in_market[:-1]]
    value = 1_000 * np.cumprod(1 + step)
    equity = pd.DataFrame(
        {"equity": value, "cash": value, "position": in_market.astype(float), "in_market": in_market}, index=times
    )
    entries = np.arange(0, bars - 500, 1_000) + 500
    exits = entries + 499
    sides = np.where(np.arange(len(entries)) % 2 == 0, "long", "short")
    pnl = (close.iloc[exits].to_numpy() - close.iloc[entries].to_numpy()) * np.where(sides == "long", 1, -1)
    trades = pd.DataFrame({
        "entry_time": times[entries], "exit_time": times[exits], "side": sides, "size": 1.0,
        "entry_price": close.iloc[entries].to_numpy(), "exit_price": close.iloc[exits].to_numpy(),
        "gross_pnl": pnl, "fees": 0.0, "net_pnl": pnl, "return_pct": pnl / close.iloc[entries].to_numpy(),
        "bars_held": 499,
    }, columns=list(TRADE_COLUMNS))
    return equity, close, trades


def decode(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_MAGIC)
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_charts_are_pngs_of_the_expected_size() -> None:
    equity, close, trades = market(20_000)
    image = decode(equity_drawdown_chart(equity, close, "sma BTC/USDT 1m"))
    assert image.shape[:2] == (700, 1200)
    assert decode(equity_drawdown_chart(equity, None, "no benchmark")).shape[:2] == (700, 1200)
    assert decode(trades_chart(close, trades, "sma BTC/USDT 1m")).shape[:2] == (600, 1200)
    assert decode(trades_chart(close, trades.iloc[:0], "no trades")).shape[:2] == (600, 1200)


def test_drawdown_panel_is_drawn_below_the_equity() -> None:
    """The drawdown fill is the only red in the chart, and it sits in the lower panel."""
    equity, close, _ = market(20_000)
    image = decode(equity_drawdown_chart(equity, close, "t"))[:, :, :3]
    red = (image[:, :, 0] > 0.8) & (image[:, :, 1] < 0.75) & (image[:, :, 2] < 0.75)
    rows = np.nonzero(red.any(axis=1))[0]
    assert red.sum() > 1_000 and rows.min() > image.shape[0] * 0.6


def test_downsample_keeps_the_extremes_and_the_ends() -> None:
    equity, _, _ = market(500_000)
    drawdown = drawdown_series(equity["equity"])
    small = downsample(drawdown, 4_000)
    assert len(small) <= 4_000 and small.index.is_monotonic_increasing
    assert small.min() == drawdown.min() and small.idxmin() == drawdown.idxmin()
    assert small.max() == drawdown.max()
    assert small.index[0] == drawdown.index[0] and small.index[-1] == drawdown.index[-1]
    assert (small == drawdown.loc[small.index]).all()
    short = drawdown.iloc[:100]
    assert downsample(short, 4_000).equals(short)


def test_charts_draw_500k_bars() -> None:
    """Half a million bars draw (downsampled); how fast is bench/report.py's business, not a test's."""
    equity, close, trades = market(500_000)
    for png in (equity_drawdown_chart(equity, close, "500k"), trades_chart(close, trades, "500k")):
        assert decode(png).shape[0] > 100


def test_no_figure_is_left_open() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    equity, close, trades = market(2_000)
    equity_drawdown_chart(equity, close, "t")
    trades_chart(close, trades, "t")
    assert plt.get_fignums() == before


def test_charts_work_after_backtrader_switched_the_backend(tmp_path: Path) -> None:
    """A fresh interpreter imports backtrader.plot first (which asks pyplot for TkAgg), with no display."""
    script = (
        "import backtrader, backtrader.plot\n"
        "from atlas_pipeline_tests.test_charts_report import market\n"
        "from atlas_pipeline.research.charts import equity_drawdown_chart, trades_chart\n"
        "equity, close, trades = market(5_000)\n"
        f"open({str(tmp_path / 'a.png')!r}, 'wb').write(equity_drawdown_chart(equity, close, 't'))\n"
        f"open({str(tmp_path / 'b.png')!r}, 'wb').write(trades_chart(close, trades, 't'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert decode((tmp_path / "a.png").read_bytes()).shape[:2] == (700, 1200)
    assert decode((tmp_path / "b.png").read_bytes()).shape[:2] == (600, 1200)


def test_png_markdown_is_a_data_uri_image() -> None:
    png = trades_chart(*market(1_000)[1:], "t")
    text = png_markdown(png, "trades [BTC]")
    match = re.fullmatch(r"!\[([^\[\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert match and match.group(1) == "trades (BTC)"
    assert base64.b64decode(match.group(2)) == png
