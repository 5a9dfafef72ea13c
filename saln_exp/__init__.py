"""saln-exp: an experiment runner for online batch selection in image classification."""

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

# The repository root (the folder holding conf/), so paths resolve the same from any working dir.
PROJECT_ROOT = Path(__file__).resolve().parents[1]

if not OmegaConf.has_resolver("saln.root"):
    OmegaConf.register_new_resolver("saln.root", lambda: str(PROJECT_ROOT))
