"""The few-step race (benchmark --race): settings come from evaluated rows of the same file, and every row is timed."""

import json
from conftest import write_tiny_checkpoints

from diffusion.serving.engine import ModelCache
from diffusion.evaluation.race import cheapest_passing, race_report, row_cost, run_race


def row(sampler, steps, accuracy, fid=1.0, guidance="none", nfe=None, **extra):
    return dict(sampler=sampler, steps=steps, nfe=nfe or steps, guidance=guidance, scale=2.0 if guidance == "cfg" else 1.0,
                self_condition=False, accuracy=accuracy, fid=fid, **extra)


def test_the_cheapest_row_over_the_bar_wins_and_guidance_costs_double():
    rows = [row("ddim", 50, 0.99), row("ode", 4, 0.96, guidance="cfg", solver="euler"),
            row("ode", 6, 0.97, solver="euler"), row("ode", 2, 0.90, solver="euler"),
            row("ode", 10, 0.99, solver="heun", nfe=19)]
    assert row_cost(rows[1]) == 8 and row_cost(rows[4]) == 19
    assert cheapest_passing(rows)["steps"] == 6  # 6 evaluations beat 4 guided ones (8 rows' worth)
    assert cheapest_passing(rows, bar=0.995) is None


def test_the_race_times_each_model_at_its_evaluated_setting_and_through_the_app(tmp_path):
    import app

    folder = write_tiny_checkpoints(tmp_path / "checkpoints")
    cache = ModelCache(folder)
    evaluated = {"identity": {"checkpoint_sha256": cache.get("tiny-flow").sha256},
                 "few_step": [row("ode", 1, 0.5, solver="euler"), row("ode", 2, 0.97, solver="euler", fid=0.7)]}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "tiny-flow.json").write_text(json.dumps(evaluated))
    stale = evaluated | {"identity": {"checkpoint_sha256": "another file"}}
    (tmp_path / "eval" / "tiny.json").write_text(json.dumps(stale))  # rows of another file are not used

    results = run_race(cache, folders=[tmp_path / "eval"], checkpoints=("tiny", "tiny-flow"), repeats=1, serve=app.serve)
    (only,) = results["rows"]
    assert only["checkpoint"] == "tiny-flow" and only["setting"]["steps"] == 2 and only["nfe"] == 2
    assert only["seconds"] > 0 and results["round_trip"]["with_downloads"] > results["round_trip"]["seconds"] > 0
    text = race_report(results)
    assert "tiny-flow: ode-euler-2, no guidance | 2 | 0.970 | 0.70 |" in text and "Through the app" in text
