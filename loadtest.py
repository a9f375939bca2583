"""Load test: many concurrent gradio_client users against a live app, each result checked against the same
request run alone.

    python loadtest.py [--clients 16] [--requests 4] [--checkpoints checkpoints] [--out docs/loadtest.md]
    python loadtest.py --classroom 30 [--rows abc] [--out docs/serving.md]     (issue 40: the classroom)
    python loadtest.py --merging [--rounds 5]       (what merging k users' requests into one batch can buy here)

Starts `python app.py` on a free local port, runs `clients` threads that each send `requests` mixed requests
(checkpoints, samplers, guidance modes, self-conditioning, seeds), then replays every request alone and
compares the images byte for byte. Prints throughput, p50/p95 latency and the server's memory before/after.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from PIL import Image

from diffusion.serving.app_client import local_client

ROOT = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mixed_requests(checkpoints: list[str], count: int, seed: int, steps: int) -> list[tuple]:
    """`count` /generate argument tuples: every field varied, deterministic in `seed`."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        sampler = rng.choice(["ddpm", "ddim", "ode"])
        guidance = rng.choice(["none", "cfg", "cfg", "classifier"])
        requests.append((rng.choice(checkpoints), sampler, rng.choice(["euler", "heun", "dpm++2m"]), steps,
                         rng.choice([0.0, 0.5]), rng.choice(["uniform", "log-snr"]), guidance, rng.randrange(3),
                         rng.choice([0.0, 1.0, 3.0]), rng.random() < 0.5, rng.randrange(10_000), rng.choice([1, 2, 3])))
    return requests


def image_bytes(gallery) -> list[bytes]:
    return [Image.open(item["image"]).tobytes() for item in gallery]


def run_load(url: str, checkpoints: list[str], clients: int, per_client: int, steps: int = 8,
             self_condition_ok=lambda name: True) -> dict:
    plans = [mixed_requests(checkpoints, per_client, seed=c, steps=steps) for c in range(clients)]
    plans = [[r[:9] + (r[9] and self_condition_ok(r[0]),) + r[10:] for r in plan] for plan in plans]
    results, latencies, errors = {}, [], []
    lock = threading.Lock()

    def user(index):
        # Each simulated user is a client address of its own, as students' browsers are: named in X-Forwarded-For,
        # which the app trusts from 127.0.0.1 only when started with --trusted-proxy 127.0.0.1 (start_app does);
        # without it all 16 would be one address, and its cap of 8 waiting jobs would refuse the rest.
        client = local_client(url, headers={"X-Forwarded-For": f"10.0.{index // 256}.{index % 256}"})
        for k, args in enumerate(plans[index]):
            started = time.perf_counter()
            try:
                gallery = client.predict(*args, api_name="/generate")[0]
            except Exception as error:  # recorded and reported: the load test must see every failure
                with lock:
                    errors.append(f"client {index} request {k}: {error!r}")
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
                results[(index, k)] = image_bytes(gallery)

    started = time.perf_counter()
    threads = [threading.Thread(target=user, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started

    alone = local_client(url)
    mismatches = [key for key, images in results.items()
                  if image_bytes(alone.predict(*plans[key[0]][key[1]], api_name="/generate")[0]) != images]
    latencies.sort()
    return {"clients": clients, "requests": clients * per_client, "succeeded": len(results), "errors": errors,
            "mismatches": mismatches, "wall_s": wall, "throughput_rps": len(results) / wall,
            "p50_s": statistics.median(latencies) if latencies else float("nan"),
            "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan")}


def start_app(checkpoints: Path, port: int, extra=(), wait_s: float = 180) -> subprocess.Popen:
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--checkpoints", str(checkpoints),
                                "--trusted-proxy", "127.0.0.1", *extra],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("the app exited:\n" + process.stdout.read()) from None
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the app did not start within {wait_s:.0f} s")


# --- the classroom (issue 40) ---------------------------------------------------------------------------------------
# Rows of one run on one machine: the same students against (a) today's single process, (b) Ray with 2 replicas of one
# thread each, (c) (b) with batching across users.
CLASSROOM_ROWS = {"a": ("(a) one process (python app.py)", ()),
                  "b": ("(b) Ray, 2 replicas x 1 thread", ("--ray", "local", "--replicas", "2", "--no-batching")),
                  "c": ("(c) (b) with batching", ("--ray", "local", "--replicas", "2"))}
FIRST_PRESS_WINDOW_S = 5.0  # every student presses the default Generate within the same 5 s


def default_generate(seed: int | None = None, checkpoint: str = "fashion-diffusion", **changes) -> tuple:
    """/generate's first 12 arguments as the page starts (the rest keep the page's defaults: its guidance method's).
    The classroom table in docs/serving.md was measured at the default of its day: 10 steps, CFG 3 rescaled 0.7."""
    from diffusion.app.generate import APP_GUIDANCE, APP_SAMPLING

    values = {"checkpoint": checkpoint, "sampler": APP_SAMPLING["sampler"], "solver": APP_SAMPLING["solver"],
              "steps": APP_SAMPLING["steps"], "eta": 0.0, "spacing": "uniform", "guidance": APP_GUIDANCE["guidance"],
              "class_index": 0, "scale": APP_GUIDANCE["scale"], "self_condition": "own",
              "seed": 0 if seed is None else seed, "batch_size": 16} | changes
    return tuple(values.values())


def classroom_plan(students: int, seed: int = 0) -> list[list[tuple]]:
    """Per student: (start offset s, endpoint, arguments) for the default Generate pressed within the first 5 s, then
    three varied actions: another seed, the reflow student's live mode (4 images, its few-step settings), and a
    4-image X/Y cell."""
    rng = random.Random(seed)
    plan = []
    for _ in range(students):
        other = rng.randrange(10_000)
        plan.append([
            (rng.uniform(0, FIRST_PRESS_WINDOW_S), "/generate", default_generate()),
            (0.0, "/generate", default_generate(other)),
            (0.0, "/generate", default_generate(rng.randrange(10_000), "fashion-reflow", sampler="ode", solver="euler",
                                                steps=2, scale=1.0, guidance="none", class_index=rng.randrange(10),
                                                batch_size=4)),
            (0.0, "/xy_grid", ("fashion-diffusion", "ode", "dpm++2m", 10, "uniform", "cfg", rng.randrange(10), 3.0,
                               rng.randrange(10_000), 4, "seed", str(rng.randrange(10_000)), "", "")),
        ])
    return plan


def _pictures(endpoint: str, outputs) -> list[bytes]:
    if endpoint == "/generate":
        return image_bytes(outputs[0])
    return [Image.open(outputs[0]).tobytes()]  # the X/Y grid's picture


def run_classroom(url: str, plan: list[list[tuple]]) -> dict:
    """Every student in a thread; per action its latency and pictures; then each distinct request once alone."""
    records, errors, lock = [], [], threading.Lock()
    started = time.perf_counter()

    def student(index):
        # A student is a browser of its own: an address of its own in X-Forwarded-For, trusted from 127.0.0.1 as
        # start_app tells the app (from one address, the guard's cap of 8 waiting jobs refused 84 of 120 actions).
        client = local_client(url, headers={"X-Forwarded-For": f"10.1.{index // 256}.{index % 256}"})
        for k, (offset, endpoint, args) in enumerate(plan[index]):
            delay = started + offset - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            began = time.perf_counter()
            try:
                pictures = _pictures(endpoint, client.predict(*args, api_name=endpoint))
            except Exception as error:  # every failure is counted
                with lock:
                    errors.append(f"student {index} action {k}: {error!r}"[:300])
                continue
            with lock:
                records.append((k, endpoint, args, time.perf_counter() - began, pictures))

    threads = [threading.Thread(target=student, args=(i,)) for i in range(len(plan))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    alone, reference = local_client(url), {}
    differ = 0
    for _, endpoint, args, _, pictures in records:
        key = (endpoint, args)
        if key not in reference:
            reference[key] = _pictures(endpoint, alone.predict(*args, api_name=endpoint))
        differ += reference[key] != pictures
    return {"records": records, "errors": errors, "differ": differ, "wall_s": wall}


def classroom_summary(label: str, stats: dict) -> str:
    """One Markdown table row: p50 / p95 / max latency of the first press and of the small (4-image) actions,
    throughput, errors, byte differences."""
    def quantiles(values):
        values = sorted(values)
        if not values:
            return "-"
        return (f"{statistics.median(values):.1f} / {values[min(len(values) - 1, int(0.95 * len(values)))]:.1f} / "
                f"{values[-1]:.1f}")

    records = stats["records"]
    first = [r[3] for r in records if r[0] == 0]
    small = [r[3] for r in records if r[0] >= 2]
    return (f"| {label} | {quantiles(first)} | {quantiles(small)} | {len(records) / stats['wall_s']:.2f} | "
            f"{len(stats['errors'])} | {stats['differ']} |")


CLASSROOM_HEADER = ("| row | default Generate p50 / p95 / max (s) | 4-image actions p50 / p95 / max (s) | actions/s | "
                    "errors | byte differences |\n|---|---|---|---|---|---|")


def classroom(students: int, rows: str, checkpoints: Path, out: str = "") -> int:
    """Run the classroom against each row's server in turn and print the table (and append it to `out`)."""
    import signal

    lines, failed = [CLASSROOM_HEADER], False
    plan = classroom_plan(students)
    for row in rows:
        label, extra = CLASSROOM_ROWS[row]
        port = free_port()
        process = start_app(checkpoints, port, extra, wait_s=600)
        try:
            url = f"http://127.0.0.1:{port}/"
            local_client(url).predict(*default_generate(), api_name="/generate")  # models loaded, warm
            stats = run_classroom(url, plan)
        finally:
            process.send_signal(signal.SIGINT)  # app.py exits through atexit, which shuts its local Ray down
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        lines.append(classroom_summary(label, stats))
        failed |= bool(stats["errors"] or stats["differ"])
        print(lines[-1], flush=True)
        for error in stats["errors"][:5]:
            print("  error:", error, flush=True)
    table = "\n".join(lines)
    print(f"\n{students} students on {os.cpu_count()} cores:\n{table}")
    if out:
        with open(out, "a") as f:
            f.write(f"\n{time.strftime('%Y-%m-%d')}, {students} students, {os.cpu_count()} cores:\n\n{table}\n")
    return 1 if failed else 0


# --- what merging can buy on this device (issue 40, row (c)) --------------------------------------------------------
MERGING_CASES = {  # the classroom's requests: (label, checkpoint, settings, images per user)
    "default Generate (of the classroom's day)": ("fashion-diffusion", dict(sampler="ode", solver="dpm++2m", steps=10,
                                                                          guidance="cfg", scale=3.0, rescale=0.7), 16),
    "live mode (reflow, 4 images)": ("fashion-reflow", dict(sampler="ode", solver="euler", steps=2, guidance="none",
                                                             scale=1.0), 4),
}


def merging(checkpoints: Path, rounds: int, users=(1, 2, 4), cases=None) -> str:
    """Per-request seconds of k users' requests run one after the other against one batch of k x images (what a merged
    call computes), on one torch thread as a replica runs; rounds interleaved, medians. The merged call's own
    byte-identity is tested elsewhere; this measures only its time, also where the rule does not let it merge."""
    import torch

    sys.path.insert(0, str(ROOT))
    from diffusion.serving.engine import ModelCache, SampleRequest, run_request

    torch.set_num_threads(1)
    cache = ModelCache(str(checkpoints), device="cpu")
    timings: dict = {}
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for label, (checkpoint, settings, images) in (cases or MERGING_CASES).items():
            for k in users:
                one = SampleRequest(checkpoint=checkpoint, batch_size=images, self_condition=None, **settings)
                batch = SampleRequest(checkpoint=checkpoint, batch_size=k * images, self_condition=None, **settings)
                started = time.perf_counter()
                for _ in range(k):
                    run_request(cache, one)
                alone = time.perf_counter() - started
                started = time.perf_counter()
                run_request(cache, batch)
                timings.setdefault((label, k), []).append((alone, time.perf_counter() - started))
    lines = ["| request | users k | k alone (s) | one batch of k (s) | speed-up |", "|---|---|---|---|---|"]
    for (label, k), pairs in timings.items():
        alone = statistics.median(a for a, _ in pairs[1:])
        merged = statistics.median(m for _, m in pairs[1:])
        lines.append(f"| {label} | {k} | {alone:.4g} | {merged:.4g} | {alone / merged:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    parser.add_argument("--out", default="", help="append a Markdown summary to this file")
    parser.add_argument("--max-growth-mib", type=float, default=200.0,
                        help="fail when the server's RSS grows more than this during the run (the second checkpoint "
                             "and the noisy classifier load during it: ~5 MiB of weights, plus allocator caches)")
    parser.add_argument("--app-arg", action="append", default=[], metavar="ARG",
                        help="pass ARG on to app.py (repeatable), e.g. --app-arg=--no-compile")
    parser.add_argument("--classroom", type=int, default=0, metavar="STUDENTS",
                        help="the classroom of issue 40 instead: STUDENTS press Generate within 5 s, then 3 more actions")
    parser.add_argument("--rows", default="abc", help="with --classroom: which servers (a one process, b Ray, c Ray "
                        "with batching)")
    parser.add_argument("--merging", action="store_true", help="instead: time k requests alone against one batch of "
                        "k (the classroom's mergeable and small requests, one torch thread)")
    parser.add_argument("--rounds", type=int, default=5, help="with --merging: interleaved rounds (medians)")
    args = parser.parse_args(argv)
    if args.merging:
        print(merging(Path(args.checkpoints), args.rounds))
        return 0
    if args.classroom:
        if not set(args.rows) <= set(CLASSROOM_ROWS) or not 1 <= args.classroom <= 200:
            parser.error("--classroom takes 1-200 students and --rows letters from 'abc'")
        return classroom(args.classroom, args.rows, Path(args.checkpoints), args.out)

    sys.path.insert(0, str(ROOT))
    from diffusion.serving.engine import ModelCache

    cache = ModelCache(args.checkpoints, device="cpu")
    names = cache.names("denoiser")
    port = free_port()
    process = start_app(Path(args.checkpoints), port, args.app_arg)
    try:
        url = f"http://127.0.0.1:{port}/"
        local_client(url).predict(*mixed_requests(names, 1, 0, 2)[0][:9], False, 0, 1, api_name="/generate")
        before = rss_mib(process.pid)
        stats = run_load(url, names, args.clients, args.requests, args.steps,
                         self_condition_ok=lambda name: cache.get(name).self_condition)
        after = rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    stats |= {"rss_before_mib": before, "rss_after_mib": after}
    summary = (f"{stats['clients']} clients x {args.requests} requests ({args.steps} steps, mixed checkpoints {names}): "
               f"{stats['succeeded']}/{stats['requests']} succeeded, {len(stats['mismatches'])} differ from the same "
               f"request run alone; {stats['throughput_rps']:.2f} requests/s, p50 {stats['p50_s']:.2f} s, "
               f"p95 {stats['p95_s']:.2f} s; server RSS {before:.0f} MiB before, {after:.0f} MiB after.")
    print(summary)
    for error in stats["errors"]:
        print("  error:", error)
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"- {time.strftime('%Y-%m-%d')}: {summary}\n")
    grew = after - before
    if grew > args.max_growth_mib:
        print(f"  memory grew by {grew:.0f} MiB, more than the bound of {args.max_growth_mib:.0f} MiB")
    return 0 if not stats["errors"] and not stats["mismatches"] and grew <= args.max_growth_mib else 1


if __name__ == "__main__":
    raise SystemExit(main())
