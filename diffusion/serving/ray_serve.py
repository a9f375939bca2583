"""The sampling tier on Ray Serve: `Sampler` replicas, each with its own ModelCache, behind a RayBackend.

    front (Gradio, guard, budget, PNGs) --RayBackend--> handle.options(stream=True) --> Sampler replica (one job at a
    time on its device) --> LocalBackend(its own cache): the same OPERATIONS as in one process

A replica's entry point `stream` is an async generator of plain events:
    ("started", pid) ("progress", args) ("preview", (step, t, x_t, x0_hat)) then ("result", value) or
    ("error", "RequestError" | "SamplingError", sentence)
The work runs in the replica's one worker thread; when the stream is cancelled (the user pressed Stop, closed the tab)
the generator is closed at its next await, which sets a flag that the work's next callback (after each network
evaluation) turns into Cancelled: the work stops within one evaluation. (A sync generator is not closed on cancel:
its thread keeps sampling, two jobs on one device, measured in issue 40.)

Requests that differ only in class, seed, first index and batch size (merged.merge_key) are merged across users with
@serve.batch into one network batch of at most MAX_BATCH images, each user's images byte-identical to the request
run alone. Arguments and results are dataclasses and tensors that Ray pickles between our own processes; nothing a
user sends is unpickled (the front builds the requests from widget values).

Importing this module needs Ray (`pip install -e ".[serve]"`); nothing else in the library imports it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import ray
import torch
from ray import serve
from ray.serve.exceptions import BackPressureError

from .previews import PreviewClock
from .backend import OPERATIONS, Backend, LocalBackend
from .budget import WorkBudget
from .engine import (MAX_BATCH, ModelCache, RequestError, SamplingError, check_request, check_work, measure_figures,
                     run_request)
from .merged import merge_key, run_merged

APP_NAME = "diffusion-sampler"
BUSY = "every sampler is busy and the queue is full; try again in a moment"
LOST = ("the sampler running this request stopped ({what}); nothing was kept of it: press the button again (another "
        "sampler takes it, and the stopped one restarts)")
REPLICA_PREVIEW_SECONDS = 0.25  # a replica sends an x0 preview at most this often (the page shows one every 0.5 s)
BATCH_WAIT_SECONDS = 0.05  # how long a request waits for others to merge with
FIGURES_SECONDS = 600  # a replica loads and times every served file once for the front (seconds on a CPU)


@dataclass(frozen=True)
class SamplerConfig:
    """What each replica builds its ModelCache from (the front's own settings)."""
    checkpoint_dir: str
    extra_folders: tuple = ()
    max_request_seconds: float | None = None  # the work budget; None: unbounded
    flops_per_second: float | None = None  # a fixed rate for the budget (tests); None: measured
    compile: bool = False
    threads: int = 1  # torch threads per replica (merging is byte-identical with one; see merged.py)
    batching: bool = True
    device: str | None = None


class Cancelled(Exception):
    """Raised in a replica's work when its stream was closed."""


@dataclass
class _Member:
    """One request waiting in a merged batch, with the way back to its own stream."""
    request: object
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    wants_progress: bool
    wants_preview: bool
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event):
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@serve.deployment(name="Sampler", max_ongoing_requests=8, max_queued_requests=32, graceful_shutdown_timeout_s=360,
                  graceful_shutdown_wait_loop_s=1, health_check_period_s=5, health_check_timeout_s=30,
                  ray_actor_options={"num_cpus": 1})
class Sampler:
    """One replica: its own ModelCache (EMA weights, eval(), inference_mode, compiled as in one process) and one
    worker thread, so it runs one job at a time on its device."""

    def __init__(self, config: SamplerConfig):
        torch.set_num_threads(config.threads)
        self.config = config
        budget = None
        if config.max_request_seconds is not None:
            budget = WorkBudget(seconds=config.max_request_seconds, flops_per_second=config.flops_per_second)
        compiler = None
        if config.compile:
            from .compiled import BackgroundCompiler
            compiler = BackgroundCompiler()
        self.cache = ModelCache(config.checkpoint_dir, capacity=4, extra_folders=config.extra_folders, budget=budget,
                                compiler=compiler, device=config.device)
        self.local = LocalBackend(self.cache)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampler")
        self.running = 0  # jobs in the worker thread now (0 or 1)
        self.evaluations = 0  # network evaluations reported since start
        self.merged_batches = 0  # batches of more than one request

    async def check_health(self):
        if not self.cache.checkpoint_dir.is_dir():
            raise RuntimeError(f"checkpoint folder {self.cache.checkpoint_dir} is gone")

    async def state(self) -> dict:
        """This replica's process and work (for tests and operators)."""
        return {"pid": os.getpid(), "running": self.running, "evaluations": self.evaluations,
                "merged_batches": self.merged_batches, "threads": torch.get_num_threads()}

    async def figures(self, names: list):
        """The work budget's figures for `names` measured here (engine.measure_figures), in the worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.worker, lambda: measure_figures(self.cache, list(names)))

    # --- the entry point -------------------------------------------------------------------------------------
    async def stream(self, name: str, args: tuple, kwargs: dict):
        """Run OPERATIONS[name](cache, *args, **kwargs), streaming events (module docstring)."""
        yield ("started", os.getpid())
        if name not in OPERATIONS:
            yield ("error", "RequestError", f"no operation {name!r:.60}")
            return
        kwargs = dict(kwargs)
        wants_progress, wants_preview = bool(kwargs.pop("progress", False)), bool(kwargs.pop("preview", False))
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        if self.config.batching and name == "run_request" and len(args) == 1 and not kwargs and merge_key(args[0]):
            member = _Member(args[0], loop, events, wants_progress, wants_preview)
            async for event in self._follow(self._merged(member), events, member.cancelled):
                yield event
            return
        cancelled = threading.Event()

        def emit(event):  # in the worker thread, after each network evaluation
            if cancelled.is_set():
                raise Cancelled()
            loop.call_soon_threadsafe(events.put_nowait, event)

        if wants_progress:
            kwargs["progress"] = self._progress_to(emit)
        if wants_preview:
            kwargs["preview"] = _throttled_preview(emit)

        def job():
            if cancelled.is_set():
                raise Cancelled()
            return self._job(lambda: self.local.call(name, *args, **kwargs))

        async for event in self._follow(loop.run_in_executor(self.worker, job), events, cancelled):
            yield event

    def _job(self, work):
        self.running += 1
        try:
            return work()
        finally:
            self.running -= 1

    def _progress_to(self, emit):
        def progress(*event):
            self.evaluations += 1
            emit(("progress", event))
        return progress

    async def _follow(self, work, events: asyncio.Queue, cancelled: threading.Event):
        """Yield the work's events as they come, then its outcome; closed early (cancelled), stop the work and
        wait for it, so the replica's next job never overlaps this one."""
        work = asyncio.ensure_future(work)
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not events.empty():
                    yield events.get_nowait()
                break
            yield _outcome(work)
        finally:
            cancelled.set()
            if not work.done():
                await asyncio.wait({work})

    # --- merging across users ------------------------------------------------------------------------------
    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_SECONDS,
                 batch_size_fn=lambda members: sum(int(m.request.batch_size) for m in members))
    async def _merged(self, members: list[_Member]) -> list:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.worker, lambda: self._job(lambda: self._run_members(members)))

    def _run_members(self, members: list[_Member]) -> list:
        """In the worker thread: each group of one merge_key as one batch; a member's own error stays its own."""
        outcomes = [None] * len(members)
        groups = defaultdict(list)
        for index, member in enumerate(members):
            if member.cancelled.is_set():
                outcomes[index] = Cancelled()
                continue
            try:  # refused alone, before it could fail its group
                check_work(self.cache, [member.request], model=check_request(self.cache, member.request))
            except (RequestError, SamplingError) as error:
                outcomes[index] = error
                continue
            groups[merge_key(member.request)].append(index)
        for indices in groups.values():
            group = [members[i] for i in indices]
            try:
                results = self._run_group(group)
            except Exception as error:  # noqa: BLE001 - each member's stream reports it
                results = [error] * len(group)
            for i, result in zip(indices, results):
                outcomes[i] = result
        return outcomes

    def _run_group(self, group: list[_Member]) -> list:
        def progress(done, total):
            self.evaluations += 1
            if all(m.cancelled.is_set() for m in group):
                raise Cancelled()
            for member in group:
                if member.wants_progress and not member.cancelled.is_set():
                    member.emit(("progress", (done, total)))

        due = PreviewClock(REPLICA_PREVIEW_SECONDS).due

        def preview(step, t, x_t, x0_hat):
            if not any(m.wants_preview for m in group) or not due():
                return
            start = 0
            for member in group:
                rows = slice(start, start + int(member.request.batch_size))
                start = rows.stop
                if member.wants_preview and not member.cancelled.is_set():
                    member.emit(("preview", (step, float(t), x_t[rows].float().cpu(), x0_hat[rows].float().cpu())))

        if len(group) == 1:
            return [run_request(self.cache, group[0].request, progress=progress, preview=preview)]
        self.merged_batches += 1
        return run_merged(self.cache, [m.request for m in group], progress=progress, preview=preview)


def _throttled_preview(emit):
    due = PreviewClock(REPLICA_PREVIEW_SECONDS).due

    def preview(step, t, x_t, x0_hat):
        if due():
            emit(("preview", (step, float(t), x_t.float().cpu(), x0_hat.float().cpu())))
    return preview


def _outcome(work: asyncio.Future):
    """A finished job (or a merged member's entry) as the stream's last event."""
    try:
        value = work.result()
    except Exception as error:  # noqa: BLE001
        value = error
    if isinstance(value, Cancelled):
        return ("error", "SamplingError", "stopped")
    if isinstance(value, RequestError):
        return ("error", "RequestError", str(value))
    if isinstance(value, SamplingError):
        return ("error", "SamplingError", str(value))
    if isinstance(value, Exception):
        return ("error", "SamplingError", f"Unexpected error on the sampler: {type(value).__name__}: {value}")
    return ("result", value)


# --- the front's side ------------------------------------------------------------------------------------------
class RayBackend(Backend):
    """The Backend whose work runs on the Sampler deployment: `call` streams the replica's events into the caller's
    progress / preview callbacks and returns its result. An exception from a callback (the app's Cancelled) cancels
    the stream, which stops the replica's work."""

    def __init__(self, handle, replicas: int = 1, front: ModelCache | None = None):
        self.handle = handle.options(method_name="stream", stream=True)
        self.replicas = replicas
        self.front = front  # given: a request is checked against the front's budget before it is sent

    @property
    def workers(self) -> int:
        return self.replicas

    def call(self, name: str, *args, progress=None, preview=None, **kwargs):
        kwargs.pop("model", None)  # a LoadedModel stays in the front; the replica loads the file itself
        if self.front is not None and name == "run_request" and len(args) == 1:
            check_work(self.front, [args[0]], model=check_request(self.front, args[0]))  # refused here, not on Ray
        kwargs |= {"progress": progress is not None, "preview": preview is not None}
        finished = False
        try:
            stream = self.handle.remote(name, args, kwargs)
            for event in stream:
                kind = event[0]
                if kind == "progress":
                    progress(*event[1])
                elif kind == "preview":
                    preview(*event[1])
                elif kind == "result":
                    finished = True
                    return event[1]
                elif kind == "error":
                    finished = True
                    raise (RequestError if event[1] == "RequestError" else SamplingError)(event[2])
            finished = True
            raise SamplingError(LOST.format(what="its stream ended without a result"))
        except BackPressureError:
            finished = True
            raise SamplingError(BUSY) from None
        except ray.exceptions.RayError as error:
            finished = True
            raise SamplingError(LOST.format(what=type(error).__name__)) from None
        finally:
            if not finished:
                stream.cancel()

    def figures(self, names: list):
        """The budget's figures (rate, per-call overheads) for `names`, as one replica measures them: what a front
        that holds no network estimates with (ModelCache.measured_by)."""
        plain = self.handle.options(method_name="figures", stream=False)
        return plain.remote(list(names)).result(timeout_s=FIGURES_SECONDS)

    def states(self, tries: int = 50) -> dict:
        """{pid: state} of the replicas this sees in `tries` calls (the router picks one per call)."""
        plain = self.handle.options(method_name="state", stream=False)
        found = {}
        for _ in range(tries):
            state = plain.remote().result(timeout_s=30)
            found[state["pid"]] = state
            if len(found) >= self.replicas:
                break
        return found


def sampler_app(config: SamplerConfig, replicas: int = 1, min_replicas: int | None = None,
                max_replicas: int | None = None, max_queued: int = 32, gpus_per_replica: float = 0):
    """The deployment bound to its config: `replicas` fixed, or autoscaled between min_replicas and max_replicas
    (Serve adds a replica when more than one request per replica is ongoing). Each replica takes one CPU (and
    gpus_per_replica GPUs); it holds up to 8 requests when it merges (one running, the rest merging into the next
    batch) and 2 when it does not (one running, one waiting, so no idle gap)."""
    longest = 2 * config.max_request_seconds if config.max_request_seconds else 3600  # the front stops a run at 2x
    options = {"max_queued_requests": max_queued, "graceful_shutdown_timeout_s": longest + 10, "max_ongoing_requests": 8 if config.batching else 2,
               "ray_actor_options": {"num_cpus": config.threads if config.device != "cuda" else 1,
                                     "num_gpus": gpus_per_replica}}
    if min_replicas is not None or max_replicas is not None:
        low = replicas if min_replicas is None else min_replicas
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": max(low, max_replicas or low),
                                         "target_ongoing_requests": 1}
    else:
        options["num_replicas"] = replicas
    return Sampler.options(**options).bind(config)


def build(args: dict):
    """Serve's application builder, for `serve run diffusion.serving.ray_serve:build checkpoint_dir=...` and a
    RayService's import_path (docs/serving.md): checkpoint_dir, max_request_seconds (180), replicas (1), batching
    (true), compile (false), gpus_per_replica (0)."""
    def flag(name, default):
        return str(args.get(name, default)).lower() in ("1", "true", "yes")

    config = SamplerConfig(str(args["checkpoint_dir"]), max_request_seconds=float(args.get("max_request_seconds", 180)),
                           batching=flag("batching", True), compile=flag("compile", False),
                           device="cuda" if float(args.get("gpus_per_replica", 0)) > 0 else None)
    return sampler_app(config, int(args.get("replicas", 1)), gpus_per_replica=float(args.get("gpus_per_replica", 0)))


def start(config: SamplerConfig, address: str = "local", replicas: int = 1, temp_dir: str | None = None,
          num_cpus: int | None = None, front: ModelCache | None = None, **app_options) -> RayBackend:
    """Join Ray at `address` ("local": start one on this machine) and run the Sampler deployment; its backend.
    Serve's HTTP proxy stays off: the front reaches the replicas through the handle only."""
    init = {"address": address, "include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    if address == "local":
        init |= {"num_cpus": num_cpus, "_temp_dir": temp_dir}
    else:
        init["address"] = address
    ray.init(**init)
    if address != "local":  # a cluster that already runs the application (a RayService): join it, don't redeploy
        try:
            return RayBackend(serve.get_app_handle(APP_NAME), app_options.get("max_replicas") or replicas, front)
        except Exception:  # noqa: BLE001 - not deployed there yet: deploy it below
            pass
    serve.start(proxy_location="Disabled")
    handle = serve.run(sampler_app(config, replicas, **app_options), name=APP_NAME, route_prefix=None)
    return RayBackend(handle, app_options.get("max_replicas") or replicas, front)


def stop() -> None:
    """Delete the deployment and leave Ray (a local Ray this process started stops with it)."""
    try:
        serve.delete(APP_NAME)
    finally:
        ray.shutdown()

