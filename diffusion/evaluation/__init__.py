"""`python -m diffusion evaluate`: sample quality per part of parts.PARTS (samplers and NFE, guidance, texture,
likelihood, few-step, straightness, the outsider's view by a second evaluator and a two-sample test, ...).

For each configuration, class-balanced samples are scored by the shipped evaluation classifier:
feature FID against the Fashion-MNIST test split (see diffusion.core.metrics for why it is not Inception
FID), class accuracy (does a sample asked for class k look like class k?) and diversity (mean
pairwise feature distance within a class, averaged over classes). Results go to JSON, a Markdown
table and PNG plots.

A full run takes hours on a CPU, so the JSON is rewritten after every row, and a later run reuses
the rows it already holds when the checkpoint file (by SHA-256) and the sample settings are the
same: an interrupted run resumes, and computing one part keeps the other parts' rows.

Under torchrun the batches of every row are split across the ranks (diffusion.serving.distributed) and scored on rank 0,
which alone reads and writes the files: K processes give the numbers of one, K times sooner.
"""

from .config import EvalConfig, row_key
from .evaluator import Evaluator
from .likelihood import likelihood_summary, recorded_likelihood
from .parts import PARTS, parts_help
from .recorded import recorded_summaries
from .report import markdown_tables

__all__ = ["EvalConfig", "Evaluator", "PARTS", "likelihood_summary", "markdown_tables", "parts_help",
           "recorded_likelihood", "recorded_summaries", "row_key"]
