"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here.

The config folder is ``config.paths.config_dir()`` (``ATLAS_CONFIG``, else ``$ATLAS_HOME/config``,
else the checkout's ``config/``), the data root ``ATLAS_HOME``. Each load says which folder it
read on stderr, so the UI's terminal shows it beside the one ``atlas ui`` printed.
"""

import sys

from atlas_pipeline.config.paths import describe_config_dir
from atlas_pipeline.defs.definitions import build_definitions

print(f"atlas code location: config {describe_config_dir()}", file=sys.stderr)
defs = build_definitions()
