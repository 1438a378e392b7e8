"""Exchange emulator: a loopback server speaking the REST subset ccxt uses for markets, candles and
tickers of Binance spot (``binance_api``) or OKX v5 (``okx_api``), over candle files or a seeded
synthetic market, with switchable faults.

Part of the product (``atlas emulator``, the offline demo) and the test bench for everything that
talks to an exchange: real ccxt runs its real request, parsing, paging and error paths against it.
"""

from atlas_pipeline.market_data.emulator.faults import FaultRule, parse_fault_spec
from atlas_pipeline.market_data.emulator.server import EXCHANGES, EmulatorServer, build_emulator
from atlas_pipeline.market_data.emulator.sources import (
    CandleSource,
    FileCandleSource,
    UnknownSymbol,
    UnsupportedTimeframe,
)
from atlas_pipeline.market_data.emulator.synthetic import SyntheticCandleSource

__all__ = [
    "CandleSource",
    "EXCHANGES",
    "EmulatorServer",
    "FaultRule",
    "FileCandleSource",
    "SyntheticCandleSource",
    "UnknownSymbol",
    "UnsupportedTimeframe",
    "build_emulator",
    "parse_fault_spec",
]
