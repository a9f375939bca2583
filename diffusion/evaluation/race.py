"""`python -m diffusion benchmark --race`: time to a 16-image grid at >= 95 % evaluator accuracy, per model.

Each denoiser races at its cheapest evaluated setting that reaches the accuracy bar: the rows `evaluate` wrote for
exactly this file (matched by SHA-256), cost = network evaluations x rows per evaluation (classifier-free guidance
runs two). fashion-diffusion's DDIM-50 with CFG 3 is the baseline the others are divided by. All rows are timed in one
run, best of N, on this machine; then the fastest is timed again through the app (a live server, its event stream read
as a browser reads it, and gradio_client), interleaved with sampling alone: the app adds PNG encoding, the queue and
HTTP. Absolute times are for context: read the ratios.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..serving.app_client import QueueClient
from ..serving.engine import ModelCache, SampleRequest, run_request

ACCURACY_BAR = 0.95
GRID = 16
BASELINE = ("fashion-diffusion", dict(sampler="ddim", steps=50, guidance="cfg", scale=3.0, self_condition=True))
REQUEST_FIELDS = ("sampler", "solver", "steps", "spacing", "guidance", "scale", "self_condition", "eta")


@dataclass
class RaceRow:
    checkpoint: str
    setting: dict  # SampleRequest fields
    accuracy: float | None  # from the evaluation row of the same file and setting
    fid: float | None
    seconds: float = 0.0
    nfe: int = 0

    @property
    def label(self) -> str:
        s = self.setting
        sampler = f"ode-{s.get('solver', 'heun')}" if s["sampler"] == "ode" else s["sampler"]
        guidance = "no guidance" if s.get("guidance", "none") == "none" else f"{s['guidance']} {s['scale']:g}"
        return f"{self.checkpoint}: {sampler}-{s['steps']}, {guidance}"


def evaluated_rows(model, folders) -> list[dict]:
    """Every scored row (FID and accuracy) `evaluate` wrote for this exact file, from the JSONs in `folders`."""
    rows = []
    for folder in folders:
        path = Path(folder) / f"{model.name}.json"
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(results, dict) or results.get("identity", {}).get("checkpoint_sha256") != model.sha256:
            continue
        for part in results.values():
            for row in part if isinstance(part, list) else [part] if isinstance(part, dict) else []:
                if isinstance(row, dict) and "accuracy" in row and "sampler" in row and "steps" in row:
                    rows.append(row)
    return rows


def row_cost(row: dict) -> int:
    """Network evaluations x rows per evaluation (classifier-free guidance batches a second, unconditional row)."""
    nfe = row.get("nfe") or row["steps"]
    return nfe * (2 if row.get("guidance") in ("cfg", "autoguidance") else 1)


def setting_of(row: dict) -> dict:
    return {k: row[k] for k in REQUEST_FIELDS if k in row}


def cheapest_passing(rows: list[dict], bar: float = ACCURACY_BAR) -> dict | None:
    """The evaluated row of lowest cost with accuracy >= bar (ties: the better FID)."""
    passing = [r for r in rows if r["accuracy"] >= bar and "method" not in r]  # guidance-method rows need more fields
    return min(passing, key=lambda r: (row_cost(r), r["fid"])) if passing else None


def race_rows(cache: ModelCache, folders, checkpoints) -> list[RaceRow]:
    rows = []
    for name in checkpoints:
        if name not in cache.names("denoiser"):
            continue
        evaluated = evaluated_rows(cache.get(name), folders)
        if name == BASELINE[0]:
            match = [r for r in evaluated if setting_of(r) | BASELINE[1] == setting_of(r)]
            rows.append(RaceRow(name, BASELINE[1], *(_scores(match[0]) if match else (None, None))))
        best = cheapest_passing(evaluated)
        if best is not None and not (name == BASELINE[0] and setting_of(best) == BASELINE[1]):
            rows.append(RaceRow(name, setting_of(best), best["accuracy"], best["fid"]))
    return rows


def _scores(row: dict):
    return row["accuracy"], row["fid"]


def time_rows(cache: ModelCache, rows: list[RaceRow], repeats: int, class_index: int = 0) -> None:
    """Best-of-`repeats` wall time of one GRID-image request per row (after one warm-up run)."""
    for row in rows:
        request = SampleRequest(checkpoint=row.checkpoint, class_index=class_index, batch_size=GRID, seed=0,
                                **({"guidance": "none", "scale": 1.0} | row.setting))
        run_request(cache, request)  # load and warm up
        times = []
        for _ in range(repeats):
            result = run_request(cache, request)
            times.append(result.seconds)
        row.seconds, row.nfe = min(times), result.nfe


def app_round_trip(url: str, cache: ModelCache, row: RaceRow, repeats: int, class_index: int = 0) -> dict:
    """Best-of-`repeats` seconds of one GRID-image request of `row`, four ways, interleaved (each repeat times each way
    once, so a busy machine slows them alike): "sampling" alone (run_request, as the race's rows); /generate through
    the app at `url` until the response arrives, read from the event stream as a browser reads it ("seconds",
    QueueClient) and through gradio_client ("gradio_client", which polls its messages every 50 ms); and through
    gradio_client fetching the response's files one after another ("with_downloads")."""
    from gradio_client import Client

    s = {"solver": "heun", "eta": 0.0, "spacing": "uniform", "guidance": "none", "scale": 1.0,
         "self_condition": False} | row.setting
    args = (row.checkpoint, s["sampler"], s["solver"], s["steps"], s["eta"], s["spacing"], s["guidance"],
            class_index, s["scale"], s["self_condition"], 0, GRID)
    request = SampleRequest(checkpoint=row.checkpoint, class_index=class_index, batch_size=GRID, seed=0,
                            **({"guidance": "none", "scale": 1.0} | row.setting))
    with QueueClient(url, "generate") as stream:
        ways = {"sampling": lambda: run_request(cache, request),
                "seconds": lambda: stream.predict(*args),
                "gradio_client": partial(Client(url, verbose=False, download_files=False).predict, *args,
                                         api_name="/generate"),
                "with_downloads": partial(Client(url, verbose=False).predict, *args, api_name="/generate")}
        times = {way: [] for way in ways}
        for call in ways.values():
            call()  # warm-up
        for _ in range(repeats):
            for way, call in ways.items():
                started = time.perf_counter()
                call()
                times[way].append(time.perf_counter() - started)
    return {way: min(seconds) for way, seconds in times.items()}


DEFAULT_FOLDERS = ("docs/evaluation/reflow", "docs/evaluation/retrained", "docs/evaluation/dit", "docs/evaluation")
DEFAULT_RACERS = ("fashion-diffusion", "fashion-flow", "fashion-reflow", "fashion-dit")


def run_race(cache: ModelCache, folders=DEFAULT_FOLDERS, checkpoints=DEFAULT_RACERS, repeats: int = 5,
             serve=None) -> dict:
    """The race over `cache`; `serve(cache)`, if given, is a context manager yielding the URL of the app serving the
    same cache (the CLI passes one: the app lives above the library)."""
    rows = race_rows(cache, folders, checkpoints)
    time_rows(cache, rows, repeats)
    results = {"device": str(cache.device), "torch": torch.__version__, "python": platform.python_version(),
               "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "repeats": repeats,
               "rows": [vars(r) | {"label": r.label} for r in rows]}
    baseline = next((r for r in rows if r.checkpoint == BASELINE[0] and r.setting == BASELINE[1]), None)
    if baseline:
        results["baseline_seconds"] = baseline.seconds
    fastest = min((r for r in rows if r.accuracy is not None and r.accuracy >= ACCURACY_BAR), key=lambda r: r.seconds,
                  default=None)
    if fastest and serve is not None:
        with serve(cache) as url:
            results["round_trip"] = {"label": fastest.label} | app_round_trip(url, cache, fastest, repeats)
    return results


def race_report(results: dict) -> str:
    lines = [f"## Time to a {GRID}-image grid at >= {ACCURACY_BAR:.0%} evaluator accuracy",
             f"{results['device']}, torch {results['torch']}, Python {results['python']}, {results['threads']} threads, "
             f"{results['date']}; best of {results['repeats']}, all rows in one run. Each model at its cheapest evaluated "
             f"setting that reaches the bar (accuracy and FID: `evaluate`'s rows for this exact file, 1,000 samples).",
             "", "| model and setting | NFE | accuracy | feature FID | seconds | speed-up over the baseline |",
             "|---|---|---|---|---|---|"]
    base = results.get("baseline_seconds")
    for r in results["rows"]:
        accuracy = f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "not evaluated"
        fid = f"{r['fid']:.2f}" if r["fid"] is not None else "-"
        ratio = f"{base / r['seconds']:.1f}x" if base else "-"
        lines.append(f"| {r['label']} | {r['nfe']} | {accuracy} | {fid} | {r['seconds']:.3f} | {ratio} |")
    if "round_trip" in results:
        trip = results["round_trip"]
        over = lambda way: f"{trip[way]:.3f} s ({trip[way] / trip['sampling']:.1f}x)"  # noqa: E731
        lines += ["", f"Through the app (`/generate` against a live server: the PNGs written, Gradio's queue and HTTP "
                      f"included), {trip['label']}, {GRID} images, best of {results['repeats']}, interleaved with "
                      f"sampling alone ({trip['sampling']:.3f} s): **{over('seconds')}** until the response arrives, "
                      f"read from the event stream as a browser reads it; {over('gradio_client')} through "
                      f"gradio_client, which polls its messages every 50 ms; {over('with_downloads')} when "
                      f"gradio_client then fetches the response's {GRID + 1} files one after another (a browser "
                      f"fetches them in parallel)."]
    return "\n".join(lines) + "\n"
