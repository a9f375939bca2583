"""Training: TrainConfig (config.py), one task object per checkpoint kind (tasks.py), the Trainer loop
(trainer.py), reflow's pair shards (pairs.py) and the recipes of the shipped checkpoints (presets.py)."""

from .config import TrainConfig
from .presets import PRESETS
from .registry import TASKS
from .tasks import load_dataset
from .trainer import STATE_FILE, Trainer, default_device, weights_digest

__all__ = ["PRESETS", "STATE_FILE", "TASKS", "TrainConfig", "Trainer", "default_device", "load_dataset",
           "weights_digest"]
