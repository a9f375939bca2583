"""Generate's click-to-result time through the app itself, for every guided-realism setting and the classic DDIM-50
with CFG 3, on idle cores (issue 41, item 2):

    python docs/evaluation/guided-realism/click_app.py docs/evaluation/guided-realism/fashion-diffusion.json
    python -m diffusion evaluate --checkpoint fashion-diffusion --parts guided-realism click-time --samples 1000 \
        --out-dir docs/evaluation/guided-realism          # the report again, every row reused

Starts `python app.py` on a free port and sends each setting's /generate (16 images, class 0, seed 0; the guidance
method's fields as the Guidance methods accordion sends them) through gradio_client: the queue, the sampling, the
progress and preview events and the 16 PNGs, all but the browser's drawing. One warm-up round, then ROUNDS rounds in
which the settings take turns; a setting's time is its median. The figures go into the evaluation JSON's click-time
row as `through_app` (a row of that part must be there: run the part first), where guided_realism.time_shares reads
them before the engine's: the click-time part's engine-only figures leave out this path's own work (~0.4 s for a
10-step run, ~1.4 s for DDIM-50 here), so they are a lower bound of each share."""

import json
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from diffusion.app.controls import NEUTRAL_METHODS  # noqa: E402
from diffusion.core.guidance import GUIDANCE_METHODS  # noqa: E402
from diffusion.evaluation.guided_realism import CLASSIC, LONGER, METHODS, SCALES  # noqa: E402
from diffusion.serving.app_client import local_client  # noqa: E402
from loadtest import free_port, start_app  # noqa: E402

ROUNDS = 5


def generate_arguments(method: str, steps: int, scale: float, sampler: str = "ode") -> dict:
    fields = NEUTRAL_METHODS | {k: v for k, v in GUIDANCE_METHODS.get(method, GUIDANCE_METHODS["cfg"]).settings.items()
                                if k != "guidance"}
    return dict(checkpoint="fashion-diffusion", sampler=sampler, solver="dpm++2m", steps=steps,
                guidance="none" if method == "none" else "cfg", scale=scale, seed=0, batch_size=16, class_index=0,
                **fields)


def settings() -> list[tuple[int, str, float]]:
    grid = [(10, "none", 1.0)] + [(10, m, s) for m in METHODS for s in SCALES]
    for steps in LONGER["steps"]:
        grid += [(steps, "none", 1.0)] + [(steps, m, s) for m in LONGER["methods"] for s in LONGER["scales"]]
    return grid


def main(evaluation_json: str):
    cases = {("classic",): generate_arguments("cfg", CLASSIC["steps"], CLASSIC["scale"], CLASSIC["sampler"])}
    cases |= {setting: generate_arguments(setting[1], setting[0], setting[2]) for setting in settings()}
    port = free_port()
    process = start_app(ROOT / "checkpoints", port, (), wait_s=300)
    try:
        client = local_client(f"http://127.0.0.1:{port}/")
        seconds = {key: [] for key in cases}
        for round_ in range(ROUNDS + 1):
            for key, arguments in cases.items():
                started = time.perf_counter()
                client.predict(**arguments, api_name="/generate")
                if round_:  # the first round warms up
                    seconds[key].append(time.perf_counter() - started)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    medians = {key: statistics.median(values) for key, values in seconds.items()}
    recorded = {"images": 16, "rounds": ROUNDS, "date": time.strftime("%Y-%m-%d"),
                "classic_seconds": medians.pop(("classic",)),
                "timings": [dict(steps=steps, method=method, scale=scale, seconds=value)
                            for (steps, method, scale), value in medians.items()]}
    results = json.loads(Path(evaluation_json).read_text())
    results["click_time"]["through_app"] = recorded
    Path(evaluation_json).write_text(json.dumps(results, indent=2))
    for t in recorded["timings"]:
        print(f"{t['steps']:>3} {t['method']:<12} {t['scale']:<4} {t['seconds']:.2f} s "
              f"{t['seconds'] / recorded['classic_seconds']:.2f}")
    print(f"DDIM-50, CFG 3: {recorded['classic_seconds']:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1])
