"""A generator's rows judged as the guided-realism part judges its rows: both evaluators' class accuracy and the mean of
five two-sample judges (seeds 0-4) over 1000 class-balanced images. For models outside that part's grid, such as a
reflow student at its own setting:

    python docs/evaluation/outsider/five_judges.py fashion-reflow \
        '{"sampler": "ode", "solver": "euler", "steps": 2, "guidance": "none", "scale": 1.0, "self_condition": true}'

Prints one line per row (a SampleRequest's fields as JSON); writes nothing.
"""

import json
import sys
import tempfile
from dataclasses import asdict

from diffusion.evaluation import EvalConfig, Evaluator
from diffusion.evaluation.guided_realism import judges_standard_error, measure
from diffusion.evaluation.judge import TwoSampleConfig


def main(checkpoint: str, rows: list[dict], checkpoint_dir: str = "checkpoints"):
    evaluator = Evaluator(EvalConfig(checkpoint=checkpoint, checkpoint_dir=checkpoint_dir, samples=1000,
                                     out_dir=tempfile.mkdtemp(prefix="five-judges-")))
    for row in rows:
        judged = measure(evaluator, dict(row, method="given", judge=asdict(TwoSampleConfig())))
        accuracy = " / ".join(f"{a:.3f}" for a in judged["by_evaluator"].values())
        judges = ", ".join(f"{j:.3f}" for j in judged["two_sample_judges"])
        print(f"{checkpoint} {json.dumps(row)}: accuracy {accuracy}; two-sample {judged['two_sample_accuracy']:.3f} "
              f"± {judges_standard_error(judged['two_sample_judges']):.3f} (judges {judges})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [json.loads(row) for row in sys.argv[2:]])
