"""Load test: many concurrent gradio_client users against a live app, each result checked against the same
request run alone.

    python loadtest.py [--clients 16] [--requests 4] [--checkpoints checkpoints] [--out docs/loadtest.md]

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
    from gradio_client import Client

    plans = [mixed_requests(checkpoints, per_client, seed=c, steps=steps) for c in range(clients)]
    plans = [[r[:9] + (r[9] and self_condition_ok(r[0]),) + r[10:] for r in plan] for plan in plans]
    results, latencies, errors = {}, [], []
    lock = threading.Lock()

    def user(index):
        # Each simulated user is a client address of its own, as students' browsers are: named in X-Forwarded-For,
        # which the app trusts from 127.0.0.1 only when started with --trusted-proxy 127.0.0.1 (start_app does);
        # without it all 16 would be one address, and its cap of 8 waiting jobs would refuse the rest.
        client = Client(url, verbose=False, headers={"X-Forwarded-For": f"10.0.{index // 256}.{index % 256}"})
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

    alone = Client(url, verbose=False)
    mismatches = [key for key, images in results.items()
                  if image_bytes(alone.predict(*plans[key[0]][key[1]], api_name="/generate")[0]) != images]
    latencies.sort()
    return {"clients": clients, "requests": clients * per_client, "succeeded": len(results), "errors": errors,
            "mismatches": mismatches, "wall_s": wall, "throughput_rps": len(results) / wall,
            "p50_s": statistics.median(latencies) if latencies else float("nan"),
            "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan")}


def start_app(checkpoints: Path, port: int) -> subprocess.Popen:
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--checkpoints", str(checkpoints),
                                "--trusted-proxy", "127.0.0.1"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("the app exited:\n" + process.stdout.read()) from None
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the app did not start within 180 s")


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
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from diffusion.serving.engine import ModelCache

    cache = ModelCache(args.checkpoints, device="cpu")
    names = cache.names("denoiser")
    port = free_port()
    process = start_app(Path(args.checkpoints), port)
    try:
        url = f"http://127.0.0.1:{port}/"
        from gradio_client import Client

        Client(url, verbose=False).predict(*mixed_requests(names, 1, 0, 2)[0][:9], False, 0, 1, api_name="/generate")
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
