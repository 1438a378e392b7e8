"""Dagster layer: partitions, asset factories, checks, schedules and resources, wired from config.

Only wiring lives here; the work itself is done by the plain-Python domain layers.
"""
