"""Vectorized twins and the simulator that runs them with the engine's conventions (DESIGN §1).

A strategy opts in with a classmethod ``vector_signals(bars, p) -> Signals`` (``p``: its
params as attributes, defaults filled in). Sweeps screen every candidate with it and confirm the
best through backtrader (``research/sweep.py``); stored results are always backtrader's.
"""

from atlas_pipeline.research.vector.signals import Bars, Signals
from atlas_pipeline.research.vector.twin import TwinRun, has_twin, run_twin, twin_mismatch

__all__ = ["Bars", "Signals", "TwinRun", "has_twin", "run_twin", "twin_mismatch"]
