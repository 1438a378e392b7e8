"""Market data layer: exchange client (ccxt), candle store, validation schemas, exchange emulator.

Plain Python; nothing here imports Dagster.
"""
