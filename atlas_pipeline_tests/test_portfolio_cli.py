"""``atlas portfolio <name>``: candles fetched through ccxt from the emulator by ``atlas fetch``, the
portfolio materialized in the Dagster instance under ATLAS_HOME."""

from __future__ import annotations

from pathlib import Path

from atlas_pipeline.cli import main
from atlas_pipeline_tests.support import needs_shared_candles
from atlas_pipeline_tests.test_cli import env  # noqa: F401  (a fixture)

pytestmark = needs_shared_candles

PORTFOLIO = (
    "portfolios:\n  basket:\n    strategy: sma_crossover\n    params: {fast: 10, slow: 30}\n    exchange: binance\n"
    "    timeframe: 5m\n    symbols: [ETH/BTC, ADA/BTC]\n    period: {start: 2018-01-10, end: 2018-01-12}\n"
    "    max_positions: 1\n    rebalance: {every: 1h, threshold: 0.02}\n"
)


def test_portfolio_command(env: dict[str, str], tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: F811
    """Through ``main`` in-process (the CLI's process path is tested in ``test_cli.py``): errors exit
    with one line (unknown name 2; no candles 1, saying what to fetch); with candles it prints the
    metrics and the attribution and writes the report."""
    (tmp_path / "config" / "backtests.yaml").write_text(PORTFOLIO)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["portfolio", "nope"]) == 2
    assert "atlas: error: portfolio 'nope' is not configured" in capsys.readouterr().err
    assert main(["portfolio", "basket"]) == 1
    *_, reason, log_line = capsys.readouterr().err.strip().splitlines()  # the reason, then where the full log is
    assert reason.startswith("atlas: failed: basket/portfolio: ") and "materialize binance/ohlcv_5m" in reason, reason
    assert log_line.startswith("atlas: full log: ")

    fetch = ["fetch", "--exchange", "binance", "--symbol", "ETH/BTC", "--symbol", "ADA/BTC", "--timeframe", "5m"]
    assert main([*fetch, "--start", "2018-01-10", "--end", "2018-01-12"]) == 0
    capsys.readouterr()
    assert main(["portfolio", "basket"]) == 0
    out = capsys.readouterr().out
    assert "## portfolio basket" in out and "Turnover" in out
    assert "contribution_return" in out and "ADA/BTC" in out
    report = tmp_path / "home" / "reports" / "portfolio_basket.html"
    html = report.read_text()
    assert f"report: {report}" in out and "Contribution per market" in html and "contribution_drawdown" in html
