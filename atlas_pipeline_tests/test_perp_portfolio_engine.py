"""Perpetual-swap portfolios against an independent loop of ``docs/trading-model.md``
("Perpetual-swap portfolios").

The reference below shares no code with the engine: one wallet over several markets, a plain loop
over the union of their bars that settles each market's funding at its first candle at or after
the funding time (before the fills), fills the orders at the next open with the cash check of
isolated margin, liquidates each market on its own mark extreme, then decides: signed weights from
each market's SMA-crossover side (``test_engine``'s numpy SMA and crossings), closing orders first,
opening ones scaled by the leveraged cushion. On real ETH/ADA/LTC/TRX-BTC 5m candles (ADA listed
later, real exchange gaps left in) with mark prices and funding built as ``test_perps_engine``
does: every fill, fee, funding payment, liquidation and the equity curve agree to 1e-9.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atlas_pipeline.research.engine import BacktestSpec
from atlas_pipeline.research.engine.perps import MissingFundingError, PerpSpec
from atlas_pipeline.research.engine.portfolio import PortfolioSpec, run_portfolio
from atlas_pipeline.research.portfolio_metrics import attribution, portfolio_metrics
from atlas_pipeline_tests.support import needs_shared_candles, shared_candles
from atlas_pipeline_tests.test_engine import crossings, sma
from atlas_pipeline_tests.test_perps_engine import funding_events, mark_candles
from atlas_pipeline_tests.test_portfolio_engine import (  # the spot test's markets, bars and signal
    ADA_LISTED_AT,
    BARS,
    FAST,
    MARKETS,
    REL,
    SLOW,
    gapped_candles,
    trailing_std,
    union_timeline,
)

pytestmark = needs_shared_candles

H8 = 8 * 3_600_000
OUTAGES = (1_515_744_000_000, 1_515_859_200_000)
"""2018-01-12 08:00 and 2018-01-13 16:00 UTC: three markets have no candle for 15 minutes (ADA has)."""


@pytest.fixture(scope="module")
def candles() -> dict[str, pd.DataFrame]:
    frames = {f"{m}/BTC:BTC": shared_candles(f"binance_{m}-BTC_5m").iloc[:BARS].reset_index(drop=True) for m in MARKETS}
    frames["ADA/BTC:BTC"] = frames["ADA/BTC:BTC"].iloc[ADA_LISTED_AT:].reset_index(drop=True)
    for symbol in ("ETH/BTC:BTC", "LTC/BTC:BTC", "TRX/BTC:BTC"):  # an outage over two funding times
        stamps = frames[symbol]["timestamp"]
        outage = np.zeros(len(stamps), bool)
        for start in OUTAGES:
            outage |= (stamps >= start) & (stamps < start + 15 * 60_000)
        frames[symbol] = frames[symbol][~outage].reset_index(drop=True)
    return frames


def perps(frames: dict[str, pd.DataFrame], leverage: float, mm: float, liq_fee: float = 0.0125) -> dict[str, PerpSpec]:
    """Per market: mark prices a small basis off its candles, funding of both signs on the 8 h grid."""
    return {
        symbol: PerpSpec(mark=mark_candles(frame, seed=3 + i), funding=funding_events(frame, seed=5 + i, mean=2e-4 * (-1) ** i),
                         leverage=leverage, maintenance_margin=mm, liquidation_fee=liq_fee)
        for i, (symbol, frame) in enumerate(frames.items())
    }


# ---- the reference ---------------------------------------------------------------------------


def side_signal(close: np.ndarray) -> np.ndarray:
    """Per candle: +1 after the last cross up, -1 after the last cross down (0 before either)."""
    cross = crossings(sma(close, FAST), sma(close, SLOW), SLOW)
    state = np.zeros(len(close), dtype=np.int64)
    held = 0
    for i in range(SLOW, len(close)):
        held = int(cross[i]) if cross[i] != 0 else held
        state[i] = held
    return state


@dataclass
class Reference:
    equity: np.ndarray
    wallet: np.ndarray
    available: np.ndarray
    fills: list[dict] = field(default_factory=list)
    funding: list[dict] = field(default_factory=list)
    liquidations: list[dict] = field(default_factory=list)
    refused: int = 0
    first: int = 0
    ms: np.ndarray = field(default_factory=lambda: np.empty(0))


def reference(frames: dict[str, pd.DataFrame], spec: PortfolioSpec) -> Reference:
    """The union timeline as the spot reference's (``test_portfolio_engine.union_timeline``), then
    the swap rules."""
    symbols = list(frames)
    ms, has, opens, closes, rows_of = union_timeline(frames)
    T, N = has.shape
    m_open, m_high, m_low = np.full((T, N), np.nan), np.full((T, N), np.nan), np.full((T, N), np.nan)
    side, vol = np.zeros((T, N), np.int64), np.full((T, N), np.nan)
    due: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for m, (symbol, rows) in enumerate(zip(symbols, rows_of)):
        frame, perp = frames[symbol], spec.perps[symbol]
        stamps = frame["timestamp"].to_numpy()
        mark = perp.mark.set_index("timestamp").loc[stamps]
        m_open[rows, m], m_high[rows, m], m_low[rows, m] = mark["open"], mark["high"], mark["low"]
        side[rows, m] = side_signal(frame["close"].to_numpy())
        vol[rows, m] = trailing_std(frame["close"].to_numpy(), spec.volatility_window)
        for t, rate in zip(perp.funding["timestamp"], perp.funding["rate"]):
            later = np.flatnonzero(stamps >= t)
            if len(later) and t >= stamps[0]:
                due.setdefault((int(rows[later[0]]), m), []).append((int(t), float(rate)))
    first = min(rows[SLOW] for rows in rows_of)
    costs = spec.market
    s, k, u = costs.slippage, costs.commission, costs.cushion
    lev = np.array([spec.perps[x].leverage for x in symbols])
    mm = np.array([spec.perps[x].maintenance_margin for x in symbols])
    liq_fee = np.array([spec.perps[x].liquidation_fee for x in symbols])
    wallet, q, e = costs.cash, np.zeros(N), np.zeros(N)
    out = Reference(np.zeros(T), np.zeros(T), np.zeros(T), first=first, ms=ms)
    pending: list[tuple[int, float]] = []
    period, refused = None, False
    sitting = np.zeros(N, np.int64)
    for t in range(T):
        for m in range(N):  # 1. funding, on the positions held before the fills
            if q[m] != 0:
                for time, rate in due.get((t, m), []):
                    amount = -q[m] * m_open[t, m] * rate
                    wallet += amount
                    out.funding.append({"m": m, "time": time, "bar": t, "position": q[m], "mark": m_open[t, m], "rate": rate, "amount": amount})
        waiting = []
        for m, size in pending:  # 2. fills at the open, in sending order
            if not has[t, m]:
                waiting.append((m, size))
                continue
            price = opens[t, m] * (1 + s if size > 0 else 1 - s)
            fee = k * abs(size) * price
            if q[m] != 0 and np.sign(size) != np.sign(q[m]):  # closing (never beyond the position)
                assert abs(size) <= abs(q[m]) * (1 + 1e-12)
                wallet += np.sign(q[m]) * abs(size) * (price - e[m]) - fee
                q[m] += size
                if abs(q[m]) <= 1e-12 * abs(size):
                    q[m], e[m] = 0.0, 0.0
            else:  # opening: margin and fee from the available balance
                available = wallet - float(np.sum(np.abs(q) * e / lev))
                if available - abs(size) * price / lev[m] - fee < 0:
                    out.refused += 1
                    refused = True
                    continue
                e[m] = (abs(q[m]) * e[m] + abs(size) * price) / (abs(q[m]) + abs(size))
                q[m] += size
                wallet -= fee
                out.fills.append({"bar": t, "m": m, "size": size, "price": price, "fee": fee, "opens": True})
                continue
            out.fills.append({"bar": t, "m": m, "size": size, "price": price, "fee": fee})
        pending = waiting
        for m in range(N):  # 3. liquidation on the market's own mark extreme
            if q[m] == 0 or not has[t, m]:
                continue
            if q[m] > 0:
                liq = e[m] * (1 - 1 / lev[m]) / (1 - mm[m])
                hit = m_low[t, m] <= liq
            else:
                liq = e[m] * (1 + 1 / lev[m]) / (1 + mm[m])
                hit = m_high[t, m] >= liq
            if hit:
                fee = min(liq_fee[m], mm[m]) * abs(q[m]) * liq
                wallet += q[m] * (liq - e[m]) - fee
                out.liquidations.append({"m": m, "bar": t, "size": q[m], "entry": e[m], "price": liq, "fee": fee})
                out.fills.append({"bar": t, "m": m, "size": -q[m], "price": liq, "fee": fee})
                sitting[m] = int(np.sign(q[m]))
                q[m], e[m] = 0.0, 0.0
                pending = [(x, size) for x, size in pending if x != m]
        out.wallet[t] = wallet
        out.available[t] = wallet - float(np.sum(np.abs(q) * e / lev))
        out.equity[t] = wallet + float(np.sum(q * (closes[t] - e)))
        sitting[(sitting != 0) & has[t] & (side[t] != sitting)] = 0
        # 4. the decision
        if t < first or t == T - 1 or pending or not all(has[t, m] for m in range(N) if q[m] != 0):
            continue
        eligible = [m for m in range(N) if has[t, m] and side[t, m] != 0 and sitting[m] == 0]
        if spec.allocation == "inverse_volatility":
            eligible = [m for m in eligible if vol[t, m] > 0]
        if spec.max_positions is not None:
            eligible = ([m for m in eligible if q[m] != 0] + [m for m in eligible if q[m] == 0])[: spec.max_positions]
        if spec.allocation == "equal":
            target = {m: side[t, m] * costs.fraction / len(eligible) for m in eligible}
        else:
            total = sum(1 / vol[t, m] for m in eligible)
            target = {m: side[t, m] * costs.fraction * (1 / vol[t, m]) / total for m in eligible}
        p = ms[t] // spec.rebalance_every_ms
        scheduled, period = p != period, p
        differs = any(np.sign(target.get(m, 0.0)) != np.sign(q[m]) for m in range(N))
        if not (scheduled or refused or differs):
            continue
        refused = False
        equity = out.equity[t]
        closing, opening = [], []
        for m in range(N):
            if m not in target:
                if q[m] != 0:
                    closing.append((m, -q[m]))
                continue
            units = target[m] * lev[m] * equity / closes[t, m]
            weight = q[m] * closes[t, m] / (lev[m] * equity)
            if q[m] != 0 and np.sign(units) != np.sign(q[m]):
                closing.append((m, -q[m]))
                opening.append((m, units))
            elif q[m] == 0 or abs(weight - target[m]) > spec.rebalance_threshold:
                delta = units - q[m]
                if delta != 0:
                    (opening if q[m] == 0 or np.sign(delta) == np.sign(q[m]) else closing).append((m, delta))
        free = out.available[t]
        for m, d in closing:
            worst = closes[t, m] * ((1 - s) * (1 - u) if q[m] > 0 else (1 + s) * (1 + u))
            free += abs(d) * e[m] / lev[m] + np.sign(q[m]) * abs(d) * (worst - e[m]) - k * abs(d) * worst
        need = sum(abs(d) * closes[t, m] * (1 + s) * (1 + u) * (1 / lev[m] + k) for m, d in opening)
        scale = max(0.0, min(1.0, free / need)) if need > 0 else 1.0
        pending = closing + [(m, d * scale) for m, d in opening if scale > 0]
    return out


# ---- the comparison --------------------------------------------------------------------------


def close_to(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


SPECS = {
    # 20x, maintenance 1 %: positions die on a ~4 % adverse move, so some markets are liquidated
    "equal_20x_max_3": dict(leverage=20, mm=0.01, spec=dict(fraction=0.6, max_positions=3, rebalance_every_ms=6 * 3_600_000,
                                                            rebalance_threshold=0.02)),
    # 3x all in: the leveraged cushion binds on every rebalance
    "inverse_volatility_3x_all_in": dict(leverage=3, mm=0.004, spec=dict(fraction=1.0, allocation="inverse_volatility",
                                                                         volatility_window=48, rebalance_every_ms=3_600_000,
                                                                         rebalance_threshold=0.01)),
}


def swap_spec(candles, name: str) -> PortfolioSpec:
    case = SPECS[name]
    options = dict(case["spec"])
    fraction = options.pop("fraction")
    market = BacktestSpec("sma_crossover", {"fast": FAST, "slow": SLOW, "allow_short": True}, fraction=fraction,
                          commission=0.0005, slippage=0.0002)
    return PortfolioSpec(market, perps=perps(candles, case["leverage"], case["mm"]), **options)


@pytest.fixture(scope="module", params=sorted(SPECS))
def case(request, candles):
    spec = swap_spec(candles, request.param)
    return request.param, spec, run_portfolio(candles, spec, "5m"), reference(candles, spec)


def bar_time(ref: Reference, bar: int) -> pd.Timestamp:
    return pd.Timestamp(int(ref.ms[bar]), unit="ms", tz="UTC")


def test_every_fill_fee_funding_liquidation_and_the_equity_equal_the_reference(case, candles) -> None:
    name, spec, result, ref = case
    symbols = list(candles)
    done = result.orders[result.orders["status"] == "completed"].reset_index(drop=True)
    assert len(done) == len(ref.fills) > 50
    for row, fill in zip(done.itertuples(), ref.fills):
        assert (row.symbol, row.side) == (symbols[fill["m"]], "buy" if fill["size"] > 0 else "sell"), (row, fill)
        assert row.executed_time == bar_time(ref, fill["bar"]), (row, fill)
        assert close_to(row.size, abs(fill["size"])) and close_to(row.price, fill["price"]), (row, fill)
        assert close_to(row.fee, fill["fee"]), (row, fill)
    assert (result.orders["status"] == "margin").sum() == ref.refused

    funding = result.funding
    assert len(funding) == len(ref.funding) > 20
    expected = pd.DataFrame(ref.funding).sort_values(["bar", "time"], kind="stable")  # the engine's order: by bar
    assert list(funding["symbol"]) == [symbols[m] for m in expected["m"]]
    assert list(funding["settled_time"]) == [bar_time(ref, b) for b in expected["bar"]]
    assert list(funding["time"]) == list(pd.to_datetime(expected["time"], unit="ms", utc=True))
    for column, key in (("position", "position"), ("mark_price", "mark"), ("rate", "rate"), ("amount", "amount")):
        np.testing.assert_allclose(funding[column], expected[key], rtol=REL, err_msg=column)

    liquidations = result.liquidations
    assert len(liquidations) == len(ref.liquidations)
    assert list(liquidations["symbol"]) == [symbols[x["m"]] for x in ref.liquidations]
    assert list(liquidations["time"]) == [bar_time(ref, x["bar"]) for x in ref.liquidations]
    assert list(liquidations["side"]) == ["long" if x["size"] > 0 else "short" for x in ref.liquidations]
    for column, key in (("entry_price", "entry"), ("liquidation_price", "price"), ("fee", "fee")):
        np.testing.assert_allclose(liquidations[column], [x[key] for x in ref.liquidations], rtol=REL, err_msg=column)

    assert result.warmup_bars == ref.first
    np.testing.assert_allclose(result.equity["equity"].to_numpy(), ref.equity[ref.first :], rtol=REL)
    np.testing.assert_allclose(result.equity["cash"].to_numpy(), ref.wallet[ref.first :], rtol=REL)
    assert close_to(float(result.equity["equity"].iloc[-1]), float(ref.equity[-1]))

    # the run exercised what it claims to: longs and shorts, funding both ways
    assert (done["side"] == "sell").any() and (result.positions < 0).any().any() and (result.positions > 0).any().any()
    assert (funding["amount"] > 0).any() and (funding["amount"] < 0).any()
    if name.startswith("equal_20x"):
        assert len(liquidations) > 0


@pytest.mark.parametrize("case", ["equal_20x_max_3"], indirect=True)
def test_a_liquidated_market_leaves_the_others_running(case, candles) -> None:
    _, _, result, ref = case
    assert ref.liquidations
    first = ref.liquidations[0]
    symbol = list(candles)[first["m"]]
    at = bar_time(ref, first["bar"])
    assert result.positions.loc[at, symbol] == 0
    others = result.positions.loc[at].drop(symbol)
    assert (others != 0).any()  # another market stays open through the liquidation bar
    later = result.orders[(result.orders["executed_time"] > at) & (result.orders["symbol"] != symbol)]
    assert len(later) > 0  # and the portfolio keeps trading them


def test_funding_settles_at_its_markets_first_candle_at_or_after_the_funding_time(case, candles) -> None:
    """On the 8 h grid a 5m bar opens at every funding time (a bar edge): settled there; where the
    market had no candle at that time (a real exchange gap), at its next candle."""
    _, _, result, _ = case
    funding = result.funding
    assert (funding["time"] <= funding["settled_time"]).all()
    edge = funding["time"] == funding["settled_time"]
    assert edge.sum() > 20 and (~edge).sum() > 0
    for row in funding[~edge].itertuples():
        own = pd.to_datetime(candles[row.symbol]["timestamp"], unit="ms", utc=True)
        assert row.settled_time == own[own >= row.time].iloc[0]
        assert row.time not in set(own)


def test_cash_is_never_negative_and_a_market_listed_later_waits_for_its_candles(case, candles) -> None:
    """The wallet never goes negative; the available balance is >= 0 after every bar that opened a
    position (checked at the fill), and dips below only by funding paid later on locked margin."""
    _, _, result, ref = case
    assert result.equity["cash"].min() >= 0 and ref.wallet.min() >= 0
    available = result.equity["available"]
    opening_bars = sorted({bar_time(ref, f["bar"]) for f in ref.fills if f.get("opens")})
    assert (available.loc[opening_bars] >= -1e-9).all() and len(opening_bars) > 10
    paid = -result.funding["amount"].clip(upper=0).sum()
    assert available.min() >= -paid
    listed = pd.Timestamp(int(candles["ADA/BTC:BTC"]["timestamp"].iloc[0]), unit="ms", tz="UTC")
    ada = result.orders[result.orders["symbol"] == "ADA/BTC:BTC"]
    assert len(ada) > 0 and ada["created_time"].min() >= listed + pd.Timedelta(minutes=5 * SLOW)
    assert (result.positions.loc[:listed, "ADA/BTC:BTC"] == 0).all()


def test_contributions_with_funding_add_up_to_the_return(case, candles) -> None:
    _, spec, result, ref = case
    metrics = portfolio_metrics(result)
    table = attribution(result)
    assert table["contribution_return"].sum() == pytest.approx(metrics["total_return"], rel=1e-9, abs=1e-12)
    assert table["contribution_drawdown"].sum() == pytest.approx(metrics["max_drawdown"], rel=1e-9, abs=1e-12)
    last_close = result.closes.iloc[-1].to_numpy()
    for m, symbol in enumerate(candles):
        fills = [f for f in ref.fills if f["m"] == m]
        funding = [f["amount"] for f in ref.funding if f["m"] == m]
        flow = sum(-f["size"] * f["price"] - f["fee"] for f in fills) + sum(funding)
        held = sum(f["size"] for f in fills)
        expected = (flow + held * last_close[m]) / spec.market.cash
        assert table.loc[symbol, "contribution_return"] == pytest.approx(expected, rel=1e-7, abs=1e-9)
        assert table.loc[symbol, "funding_paid"] == pytest.approx(-sum(a for a in funding if a < 0), rel=1e-9, abs=1e-12)
        assert table.loc[symbol, "funding_received"] == pytest.approx(sum(a for a in funding if a > 0), rel=1e-9, abs=1e-12)
        assert table.loc[symbol, "liquidations"] == sum(1 for x in ref.liquidations if x["m"] == m)
    amounts = np.array([f["amount"] for f in ref.funding])
    assert metrics["funding_paid"] == pytest.approx(-amounts[amounts < 0].sum(), rel=1e-9)
    assert metrics["funding_received"] == pytest.approx(amounts[amounts > 0].sum(), rel=1e-9)
    assert metrics["liquidations"] == len(ref.liquidations)
    notional = (result.positions.abs() * result.closes).sum(axis=1) / result.equity["equity"]
    assert metrics["max_leverage_used"] == pytest.approx(notional.max(), rel=1e-12)
    assert metrics["max_leverage_used"] > 0.8 * spec.market.fraction * spec.perps["ETH/BTC:BTC"].leverage


# ---- the cushion, missing funding --------------------------------------------------------------

SCRIPTED = textwrap.dedent(
    """
    from atlas_pipeline.research.strategy_base import LONG, SHORT, AtlasStrategy

    class Sides(AtlasStrategy):
        params = (("side", "L"), ("allow_short", True))

        def next(self):
            self.target(LONG if self.p.side == "L" else SHORT)
    """
)


def gapped(gap: float) -> dict[str, pd.DataFrame]:
    return gapped_candles(gap, ("AAA/USDT:USDT", "BBB/USDT:USDT"))


def flat_perps(frames: dict[str, pd.DataFrame], leverage: float = 3.0, funding: dict[str, np.ndarray] | None = None) -> dict[str, PerpSpec]:
    out = {}
    for symbol, frame in frames.items():
        times = np.arange(0, int(frame["timestamp"].iloc[-1]) + 1, H8, dtype=np.int64) if funding is None else funding[symbol]
        out[symbol] = PerpSpec(mark=frame, funding=pd.DataFrame({"timestamp": times, "rate": 0.0}), leverage=leverage)
    return out


@pytest.mark.parametrize("side", ["L", "S"])
def test_all_in_leveraged_orders_fit_a_gap_up_to_the_cushion(tmp_path: Path, side: str) -> None:
    """fraction 1 at 3x: both markets' margins fill at the first open after a 0.99 % gap up (the
    margin of a long or a short grows with the price); after a 1.5 % gap the second is refused
    at that open (status margin, never dropped), retried at once and filled at the next open."""
    (tmp_path / "sides.py").write_text(SCRIPTED)
    bar = lambda i: pd.Timestamp(300_000 * i, unit="ms", tz="UTC")  # noqa: E731

    def run(gap: float):
        frames = gapped(gap)
        spec = PortfolioSpec(BacktestSpec("sides", {"side": side}, fraction=1.0, commission=0.0005, cushion=0.01),
                             perps=flat_perps(frames))
        return run_portfolio(frames, spec, "5m", strategies_dir=tmp_path)

    fits = run(0.0099)
    assert (fits.orders["status"] == "completed").all() and len(fits.orders) == 2
    assert (fits.orders["executed_time"] == bar(1)).all()
    margin = (fits.positions.iloc[1].abs() * fits.closes.iloc[1]).sum() / 3
    assert 0.98 * 10_000 < margin < 10_000  # nearly all the equity is margin
    gapped_run = run(0.015)
    orders = gapped_run.orders
    [refusal] = orders[orders["status"] == "margin"].itertuples()
    assert refusal.symbol == "BBB/USDT:USDT" and refusal.created_time == bar(0)
    retry = orders[(orders["symbol"] == "BBB/USDT:USDT") & (orders["status"] == "completed")]
    assert list(retry["created_time"]) == [bar(1)] and list(retry["executed_time"]) == [bar(2)]
    for result in (fits, gapped_run):
        assert result.equity["available"].min() >= 0
        assert (np.sign(result.positions.iloc[-1]) == (1 if side == "L" else -1)).all()


def test_missing_funding_of_one_market_fails_naming_it(tmp_path: Path) -> None:
    (tmp_path / "sides.py").write_text(SCRIPTED)
    frames = gapped(0.0)
    for symbol in frames:  # two days of 5m bars: six funding times
        frames[symbol] = pd.DataFrame({
            "timestamp": np.arange(576, dtype=np.int64) * 300_000, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0,
            "volume": 1.0,
        })
    grid = np.arange(0, 2 * 86_400_000, H8, dtype=np.int64)
    funding = {"AAA/USDT:USDT": grid, "BBB/USDT:USDT": np.delete(grid, [2, 3])}
    spec = PortfolioSpec(BacktestSpec("sides"), perps=flat_perps(frames, funding=funding))
    with pytest.raises(MissingFundingError, match=r"of BBB/USDT:USDT is missing 2 funding event\(s\): "
                                                  r"1970-01-01 16:00 \.\. 1970-01-02 00:00 \(2 events\)") as error:
        run_portfolio(frames, spec, "5m", strategies_dir=tmp_path)
    assert error.value.ranges == [(2 * H8, 3 * H8, 2)]


ABOVE_ONE = textwrap.dedent(
    """
    from atlas_pipeline.research.strategy_base import FLAT, LONG, AtlasStrategy

    class AboveOne(AtlasStrategy):
        def next(self):
            self.target(LONG if self.data.close[0] > 1 else FLAT)
    """
)


def test_funding_that_leaves_no_available_balance_sends_no_opening_order(tmp_path: Path) -> None:
    """AAA all in at 3x pays 5 % funding at 08:00: the available balance goes below 0 (the margin
    stays locked). When BBB then signals (its close rises above 1) and AAA is within the
    threshold, the opening order is scaled to nothing and not sent (never a negative size, which
    would be an order to the other side)."""
    (tmp_path / "above_one.py").write_text(ABOVE_ONE)
    n = 190  # 15 h 50 min: funding at 00:00 and 08:00
    frames = {}
    for symbol, prices in (("AAA/USDT:USDT", np.full(n, 2.0)), ("BBB/USDT:USDT", np.where(np.arange(n) < 150, 0.5, 1.5))):
        frames[symbol] = pd.DataFrame({"timestamp": np.arange(n, dtype=np.int64) * 300_000, "open": prices, "high": prices,
                                       "low": prices, "close": prices, "volume": 1.0})
    specs = {}
    for symbol, frame in frames.items():
        funding = pd.DataFrame({"timestamp": np.array([0, H8], dtype=np.int64), "rate": 0.05})
        specs[symbol] = PerpSpec(mark=frame, funding=funding, leverage=3)
    spec = PortfolioSpec(BacktestSpec("above_one", fraction=1.0, commission=0.0005), perps=specs, rebalance_threshold=0.9)
    result = run_portfolio(frames, spec, "5m", strategies_dir=tmp_path)
    [paid] = result.funding.itertuples()
    assert paid.symbol == "AAA/USDT:USDT" and paid.amount < 0
    assert result.equity["available"].iloc[-1] < 0 <= result.equity["cash"].min()
    assert list(result.orders["symbol"]) == ["AAA/USDT:USDT"] and list(result.orders["side"]) == ["buy"]
    assert (result.signals["BBB/USDT:USDT"].iloc[150:] == 1).all() and (result.positions["BBB/USDT:USDT"] == 0).all()
