"""The click-time part (issue 41, item 2): Generate's click-to-result time at each guided-realism setting, beside the
classic DDIM-50 with CFG 3 (guided_realism.CLASSIC) measured in the same run, so that the guided-realism table can
hold a default to guided_realism.TIME_BUDGET of it.

Each setting runs Generate's request (16 images of one class in one batch, the page's default) through the engine,
the work the app's backend does between the click and the PNGs, once to warm up and then once per round; the
settings take turns within each round, so the machine's drift (these 2-core machines move by 1.2-1.7x from minute to
minute) falls on all of them alike, and a setting's time is its median over the rounds. Run it on idle cores."""

from __future__ import annotations

import statistics
import time

from ..serving.engine import SampleRequest, run_request
from . import guided_realism
from .part import Part

ROUNDS = 5
IMAGES = 16  # Generate's default batch


def rows(evaluator, self_conditioning) -> list[dict]:
    settings = [{k: v for k, v in row.items() if k not in ("measure", "judge")}
                for row in guided_realism.rows(evaluator, self_conditioning)]
    if not settings:
        return []
    classic = dict(guided_realism.CLASSIC, self_condition=settings[0]["self_condition"])
    quick = evaluator.config.quick  # --quick: the plumbing at 2 images, two rounds
    return [dict(measure="click-time", images=2 if quick else IMAGES, rounds=2 if quick else ROUNDS,
                 classic=classic, settings=settings)]


def request(evaluator, row: dict, setting: dict) -> SampleRequest:
    fields = {k: v for k, v in setting.items() if k != "method"}
    return SampleRequest(checkpoint=evaluator.config.checkpoint, class_index=0, seed=evaluator.config.seed,
                         batch_size=row["images"], **fields)


def measure(evaluator, row: dict) -> dict:
    requests = [request(evaluator, row, setting) for setting in [row["classic"], *row["settings"]]]
    for each in requests:  # warm-up: first-call allocations and caches
        run_request(evaluator.cache, each, model=evaluator.model)
    seconds = [[] for _ in requests]
    for _ in range(row["rounds"]):
        for each, times in zip(requests, seconds):
            started = time.perf_counter()
            run_request(evaluator.cache, each, model=evaluator.model)
            times.append(time.perf_counter() - started)
    medians = [statistics.median(times) for times in seconds]
    return {**row, "classic_seconds": medians[0],
            "timings": [dict(steps=s["steps"], method=s["method"], scale=s["scale"], seconds=m)
                        for s, m in zip(row["settings"], medians[1:])]}


def table(results: dict) -> list[str]:
    timed = results.get("click_time")
    shares = guided_realism.time_shares(results)
    if not timed or not shares:
        return []
    app = timed.get("through_app")
    by_app = {(t["steps"], t["method"], t["scale"]): t["seconds"] for t in app["timings"]} if app else {}
    lines = ["", f"Click-to-result time of Generate's request ({timed['images']} images), median of {timed['rounds']} "
                 f"interleaved rounds on {results.get('device', 'the run device')}: in the engine, DDIM-50 with CFG 3 "
                 f"took {timed['classic_seconds']:.2f} s"
                 + (f"; through the app (queue, progress, previews, PNGs; {app['rounds']} rounds), "
                    f"{app['classic_seconds']:.2f} s, and the shares are the app's" if app else "")
                 + f". A default may take <= {guided_realism.TIME_BUDGET} of it.", "",
             "| guidance | steps | engine (s) | engine share |" + (" app (s) | app share |" if app else ""),
             "|---|---|---|---|" + ("---|---|" if app else "")]
    for t in timed["timings"]:
        key = (t["steps"], t["method"], t["scale"])
        line = (f"| {guided_realism.method_words(t)} | {t['steps']} | {t['seconds']:.2f} | "
                f"{t['seconds'] / timed['classic_seconds']:.2f} |")
        if app:
            line += f" {by_app[key]:.2f} | {shares[key]:.2f} |" if key in by_app else " - | - |"
        lines.append(line)
    return lines


PART = Part("click_time", ("denoiser",), rows, table, measure=measure, one_row=True, title="Click time",
            help="Generate's click-to-result time at each guided-realism setting, as a share of DDIM-50 with CFG 3")
