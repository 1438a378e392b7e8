"""Research layer: strategies, the backtrader engine, metrics, charts and reports.

Plain Python: reads candles through ``CandleStore`` and knows nothing of Dagster.
"""
