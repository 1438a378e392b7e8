"""OHLCV assets per (exchange, timeframe), their checks and their schedules."""
