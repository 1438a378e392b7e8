"""Backtest, metrics and leaderboard assets, built from ``config/backtests.yaml``."""
