"""The registry of training tasks, one per checkpoint recipe, read by the Trainer and the CLI: a new task is a class
in tasks.py (or its own module) and a line here."""

from __future__ import annotations

from .adversarial import AdversarialDistillationTask
from .config import TrainConfig
from .tasks import (ClassifierTask, ConvNetEvaluatorTask, DenoiserTask, NoisyClassifierTask, NormalizingFlowTask,
                    ReflowTask)

TASKS = {"denoiser": DenoiserTask, "reflow": ReflowTask, "normalizing-flow": NormalizingFlowTask,
         "noisy-classifier": NoisyClassifierTask, "evaluator": ClassifierTask, "evaluator-convnet": ConvNetEvaluatorTask,
         "adversarial": AdversarialDistillationTask}


def make_task(config: TrainConfig):
    """The task object for config.task, or a ValueError naming the known tasks."""
    if config.task not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {config.task!r}")
    return TASKS[config.task](config)
