"""The HTML report tells the whole story of a swept, walk-forward backtest, read back from the
file itself: the embedded Plotly JSON and the HTML tables are parsed and compared with the stored
candles, the engine's fills, the sweep and walk-forward results, and indicator values computed
here with numpy. The file is self-contained (no URL outside the embedded plotly.js) and renders
offline in a real browser."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from atlas_pipeline.backtest_report import report_title, write_backtest_report
from atlas_pipeline.config.backtests import BacktestSettings
from atlas_pipeline.market_data.candles import split_by_day
from atlas_pipeline.market_data.store import CandleStore
from atlas_pipeline.research import walkforward
from atlas_pipeline.research.engine import BacktestSpec, run_backtest
from atlas_pipeline.research.metrics import compute_metrics
from atlas_pipeline.research.plots import price_figure, sweep_figure
from atlas_pipeline.research.report import ReportSection, ReportTable, write_html_report
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research.sweep import BacktestPool, run_sweep
from atlas_pipeline.research_runs import backtest_spec, stored_candles
from atlas_pipeline_tests.e2e import chromium, chromium_available
from atlas_pipeline_tests.support import between, needs_shared_candles, shared_candles

SYMBOL = "ETH/BTC"
THIN = "candles cover 14 of the 20 days of the period (2018-01-10 to 2018-01-24)"
GAPS = "3 candles missing inside the period"
SETTINGS = BacktestSettings(
    name="swept", strategy="sma_crossover", exchange="binance", timeframe="5m", symbols=[SYMBOL],
    period={"start": "2018-01-10", "end": "2018-01-30"}, cash=1000, fees={"taker": 0.001},
    grid={"fast": [5, 10, 15], "slow": [20, 40]}, objective="total_return", filters={"min_trades": 1},
    walk_forward={"train_days": 6, "test_days": 2},
)


# ---- reading the report back -----------------------------------------------------------------


def figures(text: str) -> list[dict]:
    specs = re.findall(r'<script type="application/json" class="plotly-figure" data-target="[^"]+">(.*?)</script>',
                       text, re.S)
    return [json.loads(spec) for spec in specs]


def values(data: object) -> np.ndarray:
    """A trace's array: plotly writes numeric arrays as base64 typed arrays (``bdata``)."""
    if isinstance(data, dict) and "bdata" in data:
        flat = np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
        shape = data.get("shape")  # "2, 3" for a 2-d array
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape is not None else flat
    return np.asarray(data, dtype=object)


def times(data: object) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(list(values(data)), utc=True))


def as_json(figure: go.Figure) -> dict:
    """A figure as the report embeds it."""
    return json.loads(pio.to_json(figure))


def trace(figure: dict, name: str) -> dict:
    [found] = [t for t in figure["data"] if t.get("name") == name]
    return found


def table_after(text: str, heading: str) -> list[list[str]]:
    """The cells of the first table after ``<h3>heading</h3>`` (header row first), unescaped."""
    start = text.index(f"<h3>{html.escape(heading)}</h3>")
    body = text[start:text.index("</table>", start)]
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def sma(close: np.ndarray, period: int) -> np.ndarray:
    out = np.full(len(close), np.nan)
    for i in range(period - 1, len(close)):
        out[i] = close[i - period + 1 : i + 1].sum() / period
    return out


# ---- one swept, walked-forward backtest, stored as the pipeline stores it ----------------------


@dataclasses.dataclass
class Stored:
    root: Path
    candles: pd.DataFrame
    sweep: object
    result: object
    walk: object
    text: str


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Stored:
    """Real candles in a candle store; the sweep, the chosen backtest and the walk-forward run in
    process (the pipeline's functions minus worker processes) and saved by ``ResultStore``."""
    root = tmp_path_factory.mktemp("report")
    store, results = CandleStore(str(root)), ResultStore(str(root))
    store.write_days("binance", SYMBOL, "5m", split_by_day(
        between(shared_candles("binance_ETH-BTC_5m"), dt.date(2018, 1, 10), dt.date(2018, 1, 24))), complete=True)
    candles = stored_candles(SETTINGS, SYMBOL, store)
    with BacktestPool(candles, backtest_spec(SETTINGS), "5m", workers=1) as pool:
        sweep = run_sweep(pool, SETTINGS.candidates(), SETTINGS.sweep_objective(), SETTINGS.sweep_filters())
        result = pool.backtest(sweep.chosen).result
        walk = walkforward.run_walk_forward(pool, SETTINGS.candidates(), SETTINGS.sweep_objective(),
                                            SETTINGS.sweep_filters(), SETTINGS.walk_forward_plan())
    results.save_sweep(SETTINGS.name, SYMBOL, sweep.table)
    results.save_result(SETTINGS.name, SYMBOL, result)
    metrics = compute_metrics(result.equity, result.trades, result.close)
    results.save_metrics(SETTINGS.name, SYMBOL, {**metrics, "warnings": [THIN]})  # as the metrics step may
    results.save_walk_forward(SETTINGS.name, SYMBOL, walk, b"png")
    path = write_backtest_report(SETTINGS, results, root / "reports" / "swept.html",
                                 warnings={SYMBOL: [GAPS], "": ["<b>report-wide</b> note"]})
    return Stored(root, candles, sweep, result, walk, path.read_text(encoding="utf-8"))


@needs_shared_candles
def test_title_names_the_chosen_params(stored: Stored) -> None:
    table = stored.sweep.table
    passed = table[table["rejected"] == ""]
    best = passed.loc[passed["total_return"].astype(float).idxmax()]  # the objective, higher is better
    chosen = f"fast={best['param_fast']}, slow={best['param_slow']}"
    [title] = re.findall(r"<h1>(.*?)</h1>", stored.text)
    assert html.unescape(title) == (f"swept: sma_crossover allow_short=False, {chosen} (chosen by total_return "
                                    "from 6 candidates) on binance 5m")
    assert "{}" not in title
    assert f'Params: <span class="params">allow_short=False, {chosen}</span>' in stored.text


def test_title_when_markets_chose_differently_or_nothing_was_swept() -> None:
    tail = "by total_return from 6 candidates on binance 5m"
    assert report_title(SETTINGS, ["fast=5, slow=20", "fast=10, slow=40", "fast=5, slow=20"]) == (
        f"swept: sma_crossover params chosen per market {tail}")
    assert report_title(SETTINGS, []) == f"swept: sma_crossover params chosen per walk-forward window {tail}"
    plain = SETTINGS.model_copy(update={"grid": None, "params": {"fast": 7}})
    assert report_title(plain, ["allow_short=False, fast=7, slow=50"] * 2) == (
        "swept: sma_crossover allow_short=False, fast=7, slow=50 on binance 5m")


@needs_shared_candles
def test_sweep_table_lists_every_candidate_and_highlights_the_chosen(stored: Stored) -> None:
    rows = table_after(stored.text, "Sweep: 6 candidates")
    header, body = rows[0], rows[1:]
    assert header[:4] == ["candidate", "fast", "slow", "objective (total_return)"]
    assert [(int(r[1]), int(r[2])) for r in body] == [(c["fast"], c["slow"]) for c in SETTINGS.candidates()]
    for row, objective in zip(body, stored.sweep.table["objective"]):
        assert row[3] == f"{objective * 100:.2f} %"  # formatted as the objective's metric
    highlighted = re.findall(r'<tr class="highlight">(.*?)</tr>', stored.text)
    assert len(highlighted) == 1 and f"<td class=\"number\">{stored.sweep.chosen['fast']}</td>" in highlighted[0]


@needs_shared_candles
def test_heatmap_is_the_objective_per_param_pair(stored: Stored) -> None:
    [heatmap] = [t for f in figures(stored.text) for t in f["data"] if t["type"] == "heatmap"]
    xs, ys, z = list(values(heatmap["x"])), list(values(heatmap["y"])), values(heatmap["z"])
    assert xs == ["5", "10", "15"] and ys == ["20", "40"]
    assert z.shape == (2, 3)
    for row in stored.sweep.table.itertuples():
        assert z[ys.index(str(row.param_slow)), xs.index(str(row.param_fast))] == pytest.approx(row.total_return, abs=0)


@needs_shared_candles
def test_every_walk_forward_window_is_listed(stored: Stored) -> None:
    rows = table_after(stored.text, f"Windows: {len(stored.walk.windows)}")
    header, body = rows[0], rows[1:]
    assert header[:6] == ["index", "train_start", "train_end", "test_start", "test_end", "winner"]
    assert len(body) == len(stored.walk.windows) >= 3
    for cells, window in zip(body, stored.walk.windows.itertuples()):
        dates = [getattr(window, c).strftime("%Y-%m-%d") for c in ("train_start", "train_end", "test_start", "test_end")]
        params = json.loads(window.params)
        assert cells[1:6] == [*dates, f"fast={params['fast']}, slow={params['slow']}"]
        assert cells[6] == f"{window.is_objective * 100:.2f} %" and cells[7] == f"{window.oos_objective * 100:.2f} %"
    efficiency = stored.walk.summary["oos_cagr"] / stored.walk.summary["is_cagr"]
    assert f"Walk-forward efficiency (out-of-sample CAGR / in-sample CAGR): {efficiency:.3f}." in stored.text or (
        stored.walk.summary["is_cagr"] <= 0 and "CAGR): n/a." in stored.text)
    # the stitched out-of-sample equity is drawn as stored (fewer bars than the downsampling cap)
    oos = [f for f in figures(stored.text) if "walk-forward" in f["layout"]["title"]["text"]][0]
    line = trace(oos, "out-of-sample equity")
    assert len(stored.walk.oos_equity) < 4_000
    np.testing.assert_array_equal(values(line["y"]), stored.walk.oos_equity["equity"].to_numpy())
    assert (times(line["x"]) == stored.walk.oos_equity.index).all()


@needs_shared_candles
def test_candles_indicators_and_fills_on_the_price_chart(stored: Stored) -> None:
    price = [f for f in figures(stored.text) if "candles, indicators and trades" in f["layout"]["title"]["text"]][0]
    bars = stored.result.equity.index
    candles = stored.candles[stored.candles["timestamp"] >= bars[0].value // 1_000_000].reset_index(drop=True)
    sticks = trace(price, "candles")
    assert (times(sticks["x"]) == pd.to_datetime(candles["timestamp"], unit="ms", utc=True)).all()
    for column in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(values(sticks[column]), candles[column].to_numpy())

    close = stored.candles["close"].to_numpy()  # the whole backtest's closes: the SMAs warm up on them
    first = len(stored.candles) - len(bars)
    for period in (stored.sweep.chosen["fast"], stored.sweep.chosen["slow"]):
        line = trace(price, f"SMA ({period})")
        np.testing.assert_allclose(values(line["y"]), sma(close, period)[first:], rtol=1e-12)
        assert line["xaxis"] == "x" and line["yaxis"] == "y"  # over the candles
    assert not [t for t in price["data"] if "CrossOver" in t.get("name", "")]  # plot=False

    fills = stored.result.orders[stored.result.orders["status"] == "completed"]
    opens = pd.Series(stored.candles["open"].to_numpy(), index=pd.to_datetime(stored.candles["timestamp"], unit="ms", utc=True))
    for side in ("buy", "sell"):
        markers = trace(price, f"{side} fills")
        expected = fills[fills["side"] == side]
        assert len(expected) > 5
        assert (times(markers["x"]) == pd.DatetimeIndex(expected["executed_time"])).all()
        # no slippage: every fill is at its bar's open, read here from the stored candles
        np.testing.assert_array_equal(values(markers["y"]), opens.loc[times(markers["x"])].to_numpy())


@needs_shared_candles
def test_report_is_offline(stored: Stored) -> None:
    text = stored.text
    bundle = get_plotlyjs()
    assert text.count(bundle) == 1, "plotly.js is embedded inline, once"
    rest = text.replace(bundle, "")
    assert not re.search(r"(https?:)?//[\w.-]+\.\w", rest), re.search(r".{80}(https?:)?//[\w.-]+\.\w.{80}", rest)
    assert not re.search(r"""\b(src|href)\s*=\s*["'](?!#)""", rest)
    assert "url(" not in rest and "@import" not in rest
    assert len(figures(text)) == 4  # price, equity, sweep heatmap, walk-forward


@needs_shared_candles
def test_warnings_are_shown_first_and_in_their_market(stored: Stored) -> None:
    text = stored.text
    boxes = re.findall(r'<div class="warnings" role="alert">(.*?)</div>', text, re.S)
    assert len(boxes) == 2
    assert text.index(boxes[0]) < text.index("<h2>Summary</h2>")
    assert "&lt;b&gt;report-wide&lt;/b&gt; note" in boxes[0]
    assert f"{SYMBOL}: {THIN}" in boxes[0] and f"{SYMBOL}: {GAPS}" in boxes[0]
    assert text.index(boxes[1]) > text.index(f"<h2>{SYMBOL}</h2>") and THIN in boxes[1] and GAPS in boxes[1]
    assert not re.search(r"<th[^>]*>warnings</th>", text, re.I)  # stored with the metrics, not shown as one
    assert f"<h2>{SYMBOL} walk-forward</h2>" in text  # shown once per market, not again there


@needs_shared_candles
@pytest.mark.skipif(not chromium_available(), reason="needs /usr/bin/chromium")
def test_report_renders_in_a_browser_without_network(stored: Stored) -> None:
    page = chromium((stored.root / "reports" / "swept.html").as_uri(), stored.root / "chromium",
                    "--virtual-time-budget=20000", "--dump-dom")
    assert page.returncode == 0, page.stderr[-2000:]
    drawn = re.findall(r'<div class="chart[^"]*js-plotly-plot[^"]*" id="(chart-\d+)"', page.stdout)
    assert drawn == [f"chart-{i}" for i in range(1, 5)], page.stdout[:2000]
    assert page.stdout.count('class="trace boxes"') == 1  # the candlesticks were drawn


# ---- pieces ------------------------------------------------------------------------------------


@needs_shared_candles
@pytest.mark.parametrize("strategy", ["bollinger_breakout", "donchian_trend", "rsi_mean_reversion"])
def test_recorded_indicators_equal_numpy(strategy: str) -> None:
    candles = shared_candles("binance_ETH-BTC_5m").iloc[:3_000].reset_index(drop=True)
    result = run_backtest(candles, BacktestSpec(strategy), "5m")
    first = result.warmup_bars
    assert (result.indicators.index == result.equity.index).all()
    high, low, close = (candles[c].to_numpy() for c in ("high", "low", "close"))
    if strategy == "bollinger_breakout":
        mid = sma(close, 20)
        std = np.array([np.nan] * 19 + [close[i - 19 : i + 1].std() for i in range(19, len(close))])  # population
        expected = {"BollingerBands (20, 2.0) mid": mid, "BollingerBands (20, 2.0) top": mid + 2 * std,
                    "BollingerBands (20, 2.0) bot": mid - 2 * std}
        panels = dict.fromkeys(expected, "price")
    elif strategy == "donchian_trend":
        def channel(values: np.ndarray, period: int, pick) -> np.ndarray:  # previous ``period`` bars
            return np.array([pick(values[max(i - period, 0) : i]) if i >= period else np.nan for i in range(len(values))])
        expected = {"entry high (20)": channel(high, 20, np.max), "entry low (20)": channel(low, 20, np.min),
                    "exit high (10)": channel(high, 10, np.max), "exit low (10)": channel(low, 10, np.min)}
        panels = dict.fromkeys(expected, "price")
    else:
        expected = {"RSI (14)": None}
        panels = {"RSI (14)": "RSI (14)"}  # its own panel below the candles
    assert result.indicator_panels == panels
    assert list(result.indicators.columns) == list(expected)
    for column, numbers in expected.items():
        if numbers is not None:
            np.testing.assert_allclose(result.indicators[column].to_numpy(), numbers[first:], rtol=1e-9)
    if strategy == "rsi_mean_reversion":
        rsi = result.indicators["RSI (14)"]
        assert rsi.between(0, 100).all() and rsi.notna().all()
    figure = as_json(price_figure(candles.iloc[first:], result.close, result.indicators, result.indicator_panels,
                                  result.orders, result.trades, "t"))
    axes = {t["name"]: t.get("yaxis", "y") for t in figure["data"]}
    # over the candles (y), or on the own panel below the volume (y2): the third row, y3
    assert {column: axes[column] for column in expected} == {
        column: "y" if panel == "price" else "y3" for column, panel in panels.items()}


@needs_shared_candles
def test_long_backtests_merge_candles(tmp_path: Path) -> None:
    candles = shared_candles("binance_ETH-BTC_5m").iloc[:2_000].reset_index(drop=True)
    result = run_backtest(candles, BacktestSpec("sma_crossover", {"fast": 5, "slow": 20}), "5m")
    shown = candles.iloc[result.warmup_bars :].reset_index(drop=True)
    figure = price_figure(shown, result.close, result.indicators, result.indicator_panels, result.orders,
                          result.trades, "t", max_candles=500)
    figure = as_json(figure)
    k = -(-len(shown) // 500)
    assert f"each candle merges {k} bars" in figure["layout"]["title"]["text"]
    sticks = [t for t in figure["data"] if t["type"] == "candlestick"][0]
    groups = [shown.iloc[i : i + k] for i in range(0, len(shown), k)]
    ohlc = np.column_stack([values(sticks[c]) for c in ("open", "high", "low", "close")])
    assert len(ohlc) == len(groups) <= 500
    for i, group in enumerate(groups):
        assert tuple(ohlc[i]) == (group["open"].iloc[0], group["high"].max(), group["low"].min(), group["close"].iloc[-1])
    slow = [t for t in figure["data"] if t.get("name") == "SMA (20)"][0]
    full = sma(candles["close"].to_numpy(), 20)[result.warmup_bars :]
    np.testing.assert_allclose(values(slow["y"]), [full[min(i + k, len(full)) - 1]
                                                                    for i in range(0, len(full), k)], rtol=1e-12)


def test_heatmap_of_three_params_holds_the_third_at_the_chosen_value() -> None:
    rng = np.random.default_rng(7)
    rows = [{"candidate": i, "param_a": a, "param_b": b, "param_c": c, "objective": rng.normal(),
             "rejected": "" if i % 5 else "trade_count 0 < min_trades 1"}
            for i, (a, b, c) in enumerate((a, b, c) for a in (1, 2) for b in (10, 20, 30) for c in (0.5, 1.5))]
    table = pd.DataFrame(rows)
    table["chosen"] = table["candidate"] == 7
    figure = as_json(sweep_figure(table, "sharpe", True, "t"))
    heatmap = figure["data"][0]
    assert list(heatmap["x"]) == ["1", "2"] and list(heatmap["y"]) == ["10", "20", "30"]
    z = values(heatmap["z"])
    held = table.loc[7, "param_c"]
    for row in table[table["param_c"] == held].itertuples():
        assert z[[10, 20, 30].index(row.param_b)][[1, 2].index(row.param_a)] == row.objective
    assert f"c={held} as chosen" in figure["layout"]["title"]["text"]
    star = figure["data"][1]
    assert (star["x"][0], star["y"][0]) == (str(table.loc[7, "param_a"]), str(table.loc[7, "param_b"]))
    assert sweep_figure(table.assign(param_b=10, param_c=1.5), "sharpe", True, "t").data[0].type == "scatter"


def test_report_text_is_escaped_and_written_atomically(tmp_path: Path) -> None:
    sections = [ReportSection("<script>alert(1)</script>", {"total_return": -0.05, "sharpe": float("nan")},
                              [ReportTable("t <x>", pd.DataFrame({"a": ["</script><script>x"]}))],
                              notes="fees 0.1% & <slippage> 0", warnings=["<i>thin</i>"], params="p=<1>")]
    path = tmp_path / "report.html"
    path.write_text("old")
    write_html_report(path, "sma <fast> & slow", sections)
    text = path.read_text(encoding="utf-8")
    assert "<h1>sma &lt;fast&gt; &amp; slow</h1>" in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "fees 0.1% &amp; &lt;slippage&gt; 0" in text and "&lt;i&gt;thin&lt;/i&gt;" in text and "p=&lt;1&gt;" in text
    for label, value in (("Total return", "-5.00 %"), ("Sharpe ratio", "n/a")):
        assert re.search(rf">{re.escape(label)}</th><td[^>]*>{re.escape(value)}</td>", text)
    scripts = re.findall(r"<script\b", text.replace(get_plotlyjs(), ""))
    assert len(scripts) == 2  # plotly.js and the drawing script: nothing user-written opened one
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
