"""What an evaluation part is: its rows, how one row is measured, its table and its plot (the registry is in parts.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol


class Evaluation(Protocol):
    """What a part may use of the run that measures it (evaluator.Evaluator is one). Parts depend on this, not on
    the evaluator, so the evaluator reads the registry of parts without an import circle."""
    config: Any  # config.EvalConfig, scaled
    cache: Any  # serving's ModelCache
    model: Any  # the LoadedModel being evaluated
    kind: str
    classes: int
    evaluator: Any  # the evaluation classifier's network
    test_set: Any  # (images, labels) of the Fashion-MNIST test split
    judges: dict
    real_split: Any  # outsider.RealSplit
    pool_features: dict
    comparison_features: dict

    def draw(self, **request_fields) -> Any: ...
    def score(self, **request_fields) -> "dict | None": ...
    def metrics(self, images, labels) -> dict: ...


Rows = Callable[[Evaluation, tuple], list]  # (the run, self-conditioning settings) -> the part's planned rows
Measure = Callable[[Evaluation, dict], "dict | None"]  # a row's fields -> the scored row (None on ranks other than 0)
Table = Callable[[dict], list]  # the whole results -> Markdown lines ([] when the part has no rows)
Plot = Callable[[dict, Path, object], None]  # (results, output folder, matplotlib.pyplot) -> writes its PNG
Summary = Callable[[dict], str]  # a recorded run's results -> one sentence for the model card ('' when it has no rows)


@dataclass(frozen=True)
class Part:
    name: str  # the key of its rows in the JSON; the CLI spells it with hyphens ("quality_bar": --parts quality-bar)
    kinds: tuple[str, ...]  # the checkpoint kinds it applies to
    rows: Rows
    table: Table
    defaults_for: tuple[str, ...] = ()  # the kinds it is computed for when no --parts are given
    measure: Measure | None = None  # None: Evaluator.score (sample class-balanced images, score them)
    plot: Plot | None = None
    one_row: bool = False  # the JSON holds its single row itself, not a list (and no key when it has none)
    summary: Summary | None = None  # what the model card quotes from a recorded run
    title: str = ""  # the model card's name for the summary
    help: str = ""  # what it measures, for `evaluate --help`

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-")
