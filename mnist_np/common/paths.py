"""Where the project lives: every default location is built from :data:`PROJECT_ROOT`, never from the working directory.

Hydra changes what a run's working directory means (each run gets its own
output dir), so the store, the configs and the outputs are all absolute.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
OUTPUTS_DIR = PROJECT_ROOT / "outputs"
