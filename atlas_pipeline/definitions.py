"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here.

The config comes from ``ATLAS_CONFIG`` (default: the checkout's ``config/``), the data root from
``ATLAS_HOME``.
"""

from atlas_pipeline.defs.definitions import build_definitions

defs = build_definitions()
