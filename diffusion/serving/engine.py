"""The sampling backend: validated request types, a cache of loaded models, and one entry point.

`run_request` dispatches on the checkpoint's kind: a denoiser takes a SampleRequest and goes through the
samplers; a normalizing flow takes a FlowRequest and decodes z ~ N(0, T^2 I) in one exact pass. A request
of the wrong type for the checkpoint is refused with a message, never half-used.

No Gradio here. Everything runs under torch.inference_mode(); the model cache holds EMA weights
(the only weights a checkpoint has) in eval() on the device. Noise is drawn on CPU generators so a
seed means the same images on every device.
"""

from __future__ import annotations

import functools

import math
import statistics
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from .budget import MeasuredFigures, Work, WorkBudget
from ..formats.checkpoint import CheckpointError, LoadedModel, check_file, describe_checkpoint, load_checkpoint
from .compiled import BackgroundCompiler, CompiledNetwork
from ..core.denoiser import Denoiser, classifier_log_prob_gradient
from ..core.guidance import GUIDANCE_MODES, Guidance
from ..formats.diffusers_folder import check_folder, describe_folder, folder_signature, is_diffusers_folder, load_folder
from ..core.sampling import MAX_SDE_LOG_SNR_STEP, ODE_SOLVERS, SAMPLERS, draw_noise, image_generators, log_snr_step
from ..core.schedules import SPACINGS, time_grid

MAX_LOG_SNR = 30.0  # guidance intervals are given in log-SNR; every schedule here spans less than [-30, 30]
MAX_STEPS = 1000
MAX_NFE = 5000  # network evaluations of one request (the stochastic samplers multiply steps)
MAX_BATCH = 64
MAX_SCALE = 100.0
MAX_SEED = 2**63 - 1
MAX_TEMPERATURE = 2.0
GENERATIVE_KINDS = ("denoiser", "normalizing-flow")  # checkpoint kinds that make images


class RequestError(ValueError):
    """A request a user can fix: the message says what is wrong, in words."""


class SamplingError(RuntimeError):
    """Sampling failed for this request only (e.g. out of memory); the backend keeps serving."""


@dataclass(frozen=True)
class SampleRequest:
    checkpoint: str = "fashion-diffusion"
    sampler: str = "ddim"  # ddpm | ddim | ode
    solver: str = "heun"  # ode only: euler | heun | dpm++2m
    steps: int = 50
    eta: float = 0.0  # ddim only
    stochasticity: float = 1.0  # sde: 0 the probability-flow ODE, 1 the reverse SDE
    predictor: str = "ddpm"  # pc: ddpm (ancestral) or ddim step before the correctors
    correctors: int = 1  # pc: Langevin corrector steps per step (one network evaluation each)
    snr: float = 0.16  # pc: the correctors' signal-to-noise ratio r (Song et al. 2021 use 0.16 on CIFAR-10)
    langevin_steps: int = 5  # langevin: steps per noise level
    step_size: float = 1.0  # langevin: c in a = c (sigma / alpha)^2
    spacing: str = "uniform"  # uniform | log-snr
    guidance: str = "cfg"  # none | cfg | classifier | autoguidance
    class_index: int | None = 0  # None: unconditional (guidance "none" only)
    scale: float = 3.0
    guide: str = ""  # autoguidance: the weaker checkpoint ("": CHECKPOINT-weak)
    # Modifiers of the guided prediction (guidance.py); each default is neutral, i.e. plain CFG.
    rescale: float = 0.0  # CFG rescale phi (Lin et al. 2024)
    interval_low: float | None = None  # guidance interval in log-SNR (Kynkaanniemi et al. 2024); None: unbounded
    interval_high: float | None = None
    apg_eta: float = 1.0  # APG (Sadat et al. 2024): parallel weight eta, norm bound r (0: none), momentum beta
    apg_norm: float = 0.0
    apg_momentum: float = 0.0
    threshold: float = 0.0  # dynamic thresholding percentile (Saharia et al. 2022; 0: off)
    self_condition: bool | None = False  # None: the checkpoint's own (on where it was trained with it; the API's default)
    seed: int = 0
    batch_size: int = 16
    clip_x0: bool | None = None  # clamp x0_hat to [-1, 1]; None: the checkpoint's own setting (diffusers' clip_sample)
    first_index: int = 0  # image i of the request uses the noise of image first_index + i of the seed


@dataclass(frozen=True)
class FlowRequest:
    """A normalizing flow's request: x = decode(T z, y) with z ~ N(0, I) drawn from (seed, index), one exact
    pass. It has no sampler, steps or guidance, and a denoiser has no temperature: each kind gets its own type."""

    checkpoint: str = "fashion-nice"
    class_index: int | None = 0  # None: unconditional flows only
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 16
    first_index: int = 0


@dataclass
class SampleResult:
    images: torch.Tensor  # (B, C, H, W) float in [-1, 1], on the CPU
    nfe: int
    seconds: float
    guidance_trace: list  # [(log-SNR, guidance strength)] per network evaluation, when traced
    request: SampleRequest | FlowRequest
    trajectory: list = field(default_factory=list)  # [(step, t, x_t, x0_hat)] when recorded, CPU tensors
    checkpoint_sha256: str = ""  # of the file that made these images
    class_names: tuple = ()  # its classes (for a readable caption of the request)


# --- validation -------------------------------------------------------------------------------
def _check_number(name, value, low, high, integer=False):
    # Python ints are compared exactly (10**400 must not reach float() and overflow).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be {'a whole number' if integer else 'a number'}, got {value!r:.40}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{name} must be finite, got {value}")
    if integer and isinstance(value, float) and not value.is_integer():
        raise RequestError(f"{name} must be a whole number, got {value!r:.60}")
    if not low <= value <= high:
        digits = str(value)
        shown = f"{value:.3g}" if isinstance(value, float) else digits if len(digits) < 20 else f"a {len(digits)}-digit number"
        if high == MAX_SEED:  # "between 0 and 9223372036854775807" reads as noise
            raise RequestError(f"{name} must be a whole number from {low} to 2^63 - 1, got {shown}")
        raise RequestError(f"{name} must be between {low} and {high}, got {shown}")


def check_seed(seed, name: str = "seed") -> int:
    """A seed as every endpoint takes it: a whole number in [0, 2^63 - 1]."""
    _check_number(name, seed, 0, MAX_SEED, integer=True)
    return seed


def clip_x0(request: SampleRequest, model: LoadedModel) -> bool:
    """The request's x0 clipping, or where it says None the checkpoint's (False for our own models)."""
    return bool(model.config.get("clip_x0", False)) if request.clip_x0 is None else request.clip_x0


def self_conditioning(request: SampleRequest, model: LoadedModel) -> bool:
    """The request's self-conditioning, or where it says None the checkpoint's own."""
    return model.self_condition if request.self_condition is None else request.self_condition


def validate_request(request: SampleRequest, model: LoadedModel, has_classifier: bool, max_batch: int = MAX_BATCH):
    """Raise RequestError for anything out of range or inconsistent with the checkpoint."""
    if request.sampler not in SAMPLERS:
        raise RequestError(f"unknown sampler {request.sampler!r:.60}; choose one of {', '.join(SAMPLERS)}")
    if request.sampler == "ode" and request.solver not in ODE_SOLVERS:
        raise RequestError(f"unknown ODE solver {request.solver!r:.60}; choose one of {', '.join(ODE_SOLVERS)}")
    if request.spacing not in SPACINGS:
        raise RequestError(f"unknown time spacing {request.spacing!r:.60}; choose one of {', '.join(SPACINGS)}")
    _check_number("steps", request.steps, 1, MAX_STEPS, integer=True)
    if request.spacing == "leading":
        discrete = model.schedule.discrete
        if discrete is None:
            raise RequestError(f"'leading' spacing (diffusers' default) needs a discrete-step schedule; checkpoint "
                               f"{request.checkpoint!r:.60} has the continuous {model.schedule.name!r} schedule")
        _check_number("steps (leading spacing)", request.steps, 1, discrete.steps, integer=True)
    _check_number("eta", request.eta, 0.0, 1.0)
    _check_stochastic_sampler(request, model)
    _check_images(request, max_batch)
    _check_number("guidance scale", request.scale, 0.0, MAX_SCALE)
    if request.guidance not in GUIDANCE_MODES:
        raise RequestError(f"unknown guidance mode {request.guidance!r:.60}; choose one of {', '.join(GUIDANCE_MODES)}")
    if request.class_index is None and request.guidance != "none":
        raise RequestError("guidance needs a class")
    _check_class(request, model)
    if request.guidance == "cfg" and model.config.get("null_class") is None:
        why = (": a diffusers UNet2DModel records no null class (if its last class embedding was trained as the "
               "dropped label, convert it with `python -m diffusion import-diffusers FOLDER --null-class N`)"
               if model.config.get("source", {}).get("format") == "diffusers" else "")
        raise RequestError(f"checkpoint {request.checkpoint!r:.60} was not trained for classifier-free guidance{why}")
    if request.guidance == "classifier" and not has_classifier:
        raise RequestError("classifier guidance needs a noisy classifier checkpoint, and none is available")
    _check_guidance_modifiers(request)
    if request.clip_x0 is not None and not isinstance(request.clip_x0, bool):
        raise RequestError(f"clip_x0 must be true, false or null, got {request.clip_x0!r:.40}")
    if request.self_condition is not None and not isinstance(request.self_condition, bool):
        raise RequestError(f"self_condition must be true, false or null, got {request.self_condition!r:.40}")
    if request.self_condition and not model.self_condition:
        raise RequestError(f"checkpoint {request.checkpoint!r:.60} was not trained with self-conditioning")


def _worst_log_snr_step(schedule, steps: int, spacing: str) -> float:
    """The largest finite log-SNR change of one step of this grid (infinite steps take no Langevin part)."""
    points = [tuple(map(float, schedule.alpha_sigma(t))) for t in time_grid(schedule, steps, spacing).double()]
    changes = [log_snr_step(*points[i], *points[i + 1]) for i in range(len(points) - 1)]
    return max((d for d in changes if math.isfinite(d)), default=0.0)


def _least_stable_steps(schedule, start: int, spacing: str) -> int | None:
    """The fewest steps from `start` to MAX_STEPS whose grid keeps every Euler-Maruyama step stable, or None; by
    bisection (more steps never make the largest step larger), so a refusal costs a few grids, not a thousand."""
    stable = lambda n: _worst_log_snr_step(schedule, n, spacing) < MAX_SDE_LOG_SNR_STEP  # noqa: E731
    if start > MAX_STEPS or not stable(MAX_STEPS):
        return None
    low, high = start, MAX_STEPS  # stable(high) holds
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if stable(middle) else (middle + 1, high)
    return high


def _check_stochastic_sampler(request: SampleRequest, model: LoadedModel):
    """The sde, pc and langevin samplers' settings, their NFE, and Euler-Maruyama's stability on this grid."""
    if request.sampler == "sde":
        _check_number("stochasticity", request.stochasticity, 0.0, 1.0)
        worst = _worst_log_snr_step(model.schedule, int(request.steps), request.spacing)
        if request.stochasticity > 0 and worst >= MAX_SDE_LOG_SNR_STEP:
            enough = _least_stable_steps(model.schedule, int(request.steps) + 1, request.spacing)
            more = (f"take at least {enough} steps, or choose" if enough else
                    f"no step count up to {MAX_STEPS} makes this spacing stable near t = 0: choose")
            raise RequestError(f"the reverse SDE's Euler-Maruyama step is unstable on this grid: one step crosses "
                               f"{worst:.1f} in log-SNR (at most {MAX_SDE_LOG_SNR_STEP:g}); {more} 'uniform in log-SNR' "
                               f"spacing")
    if request.sampler == "pc":
        if request.predictor not in ("ddpm", "ddim"):
            raise RequestError(f"unknown predictor {request.predictor!r:.40}; choose ddpm or ddim")
        _check_number("corrector steps", request.correctors, 0, 10, integer=True)
        _check_number("corrector signal-to-noise ratio", request.snr, 0.001, 1.0)
    if request.sampler == "langevin":
        _check_number("Langevin steps per level", request.langevin_steps, 1, 50, integer=True)
        _check_number("Langevin step size", request.step_size, 0.001, 2.0)
        _check_number("steps (annealed Langevin: noise levels + 1)", request.steps, 2, MAX_STEPS, integer=True)
    nfe = expected_nfe(request)
    if nfe > MAX_NFE:
        raise RequestError(f"this request needs {nfe:,} network evaluations per image batch; at most {MAX_NFE:,}")


def _check_guidance_modifiers(request: SampleRequest):
    _check_number("CFG rescale phi", request.rescale, 0.0, 1.0)
    _check_number("APG eta", request.apg_eta, 0.0, 1.0)
    _check_number("APG norm bound", request.apg_norm, 0.0, 1000.0)
    _check_number("APG momentum", request.apg_momentum, -0.99, 0.99)
    _check_number("dynamic thresholding percentile", request.threshold, 0.0, 0.9999)
    for name in ("interval_low", "interval_high"):
        if getattr(request, name) is not None:
            _check_number(f"guidance interval {name.split('_')[1]} (log-SNR)", getattr(request, name), -MAX_LOG_SNR, MAX_LOG_SNR)
    if None not in (request.interval_low, request.interval_high) and request.interval_low > request.interval_high:
        raise RequestError(f"guidance interval is empty: low {request.interval_low:g} > high "
                           f"{request.interval_high:g} (log-SNR)")
    guidance = guidance_of(request)
    if (guidance.rescale or guidance.uses_apg) and not guidance.pairs_predictions:
        raise RequestError("CFG rescale and APG change classifier-free guidance or autoguidance; choose one of those")
    if not isinstance(request.guide, str) or len(request.guide) > 200:
        raise RequestError("guide must be a checkpoint name")


def guidance_of(request: SampleRequest) -> Guidance:
    """The request's guidance settings as the Denoiser takes them."""
    low = -math.inf if request.interval_low is None else float(request.interval_low)
    high = math.inf if request.interval_high is None else float(request.interval_high)
    return Guidance(request.guidance, float(request.scale), rescale=float(request.rescale), interval=(low, high),
                    apg_eta=float(request.apg_eta), apg_norm=float(request.apg_norm),
                    apg_momentum=float(request.apg_momentum), threshold=float(request.threshold))


def guide_name(request: SampleRequest) -> str:
    """Autoguidance's weaker model: the one named, or the checkpoint's '-weak' sibling."""
    return request.guide or f"{request.checkpoint}-weak"


def _check_images(request, max_batch: int):
    """What every generative request has: how many images, and which noise (seed, first index)."""
    _check_number("batch size", request.batch_size, 1, max_batch, integer=True)
    _check_number("seed", request.seed, 0, MAX_SEED, integer=True)
    _check_number("first image index", request.first_index, 0, 1_000_000, integer=True)


def _check_class(request, model: LoadedModel):
    classes = model.class_names
    conditional = bool(classes)
    if request.class_index is None:
        if conditional and (model.kind == "normalizing-flow" or model.config.get("null_class", 0) is None):
            raise RequestError(f"checkpoint {request.checkpoint!r:.60} is class-conditional: choose a class (it has no null class to sample without one)")
        return
    if not classes:
        raise RequestError(f"checkpoint {request.checkpoint!r:.60} is unconditional: it has no classes")
    _check_number("class", request.class_index, 0, len(classes) - 1, integer=True)


def validate_flow_request(request: FlowRequest, model: LoadedModel, max_batch: int = MAX_BATCH):
    _check_number("temperature", request.temperature, 0.0, MAX_TEMPERATURE)
    _check_images(request, max_batch)
    _check_class(request, model)


# --- the model cache --------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointEntry:
    name: str
    path: Path
    kind: str | None
    card: str
    error: str | None  # None when the file's metadata is valid
    few_step: bool = False  # its file names few-step sampling defaults (a reflow student)

    @property
    def available(self) -> bool:
        return self.error is None


def file_signature(path: Path) -> tuple[int, int, int]:
    """A file version's identity: mtime, size and inode (a replacement with equal size and mtime is new)."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


@functools.lru_cache(maxsize=1024)
def describe_entry(path: Path, signature: tuple) -> CheckpointEntry:
    """A checkpoint's listing from its headers and config (no tensor data), once per version of the file in this
    process: every ModelCache lists its folder, and each check builds the network on the meta device (~0.1 s)."""
    folder = path.is_dir()
    name = path.name if folder else path.stem
    try:
        meta = check_folder(path) if folder else check_file(path)
    except CheckpointError as error:
        return CheckpointEntry(name, path, None, "", str(error))
    few_step = bool((meta.get("config") or {}).get("defaults"))
    return CheckpointEntry(name, path, meta["kind"], meta["card"], None, few_step)


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class ModelCache:
    """LRU of loaded models keyed by checkpoint name; a file or folder changed on disk is reloaded.

    What can be loaded: plain names of .safetensors files directly inside `checkpoint_dir`, diffusers pipeline
    folders directly inside it (named by the folder), and the diffusers folders given in `extra_folders`.
    Thread-safe: loads happen under a lock; a loaded model is never mutated after it is cached.

    weights=False (the Ray-mode front, whose replicas hold the networks): every model is described from its header
    alone (LoadedModel.weights False: the network on the meta device, no tensor read), which answers names, kinds,
    classes, config, validation and FLOPs; the budget's rate and each network's call overhead, which only running it
    can measure, come from where the networks run (measured_by).
    """

    def __init__(self, checkpoint_dir="checkpoints", capacity: int = 4, device=None, extra_folders=(),
                 budget: WorkBudget | None = None, compiler: BackgroundCompiler | None = None,
                 max_batch: int = MAX_BATCH, weights: bool = True):
        self.checkpoint_dir = Path(checkpoint_dir).resolve()
        self.extra_folders = tuple(Path(p).resolve() for p in extra_folders)
        self.capacity = capacity
        self.device = torch.device(device) if device else pick_device()
        # What one request may cost. None: unbounded, for the command line and evaluations, whose long jobs are the
        # point; the app passes its bounded budget (app.py --max-request-seconds).
        budget = budget or WorkBudget(seconds=math.inf)
        self.budget = budget if budget.device_type else replace(budget, device_type=self.device.type,
                                                                 machine_rate=None)
        self._flops: dict[str, float] = {}  # FLOPs of one image through a model, by the file's SHA-256
        self._overheads: dict[str, float] = {}  # a call's fixed cost in FLOP-equivalents, by the file's SHA-256
        self._models: OrderedDict[str, tuple[tuple, LoadedModel]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # number of times a file was read (for tests and the benchmark)
        # With a compiler, denoisers are served as CompiledNetworks: eager until a background compile of a call's
        # shapes is ready (the app; diffusion/compiled.py). None: eager throughout (the CLI, evaluations, tests).
        self.compiler = compiler
        self.max_batch = max_batch  # images per request (the GPU benchmark raises it to 256)
        self.weights = weights
        self.measurer = None  # weights=False: what measures call overheads where the networks run (measured_by)
        self.counted_as = self.device.type  # the device type whose FLOP counts a described model's count equals

    def _candidates(self) -> list[Path]:
        """Every .safetensors file and diffusers folder served, files first; a name is served once."""
        files = [p for p in sorted(self.checkpoint_dir.glob("*.safetensors")) if not p.name.startswith(".")]
        folders = [p for p in sorted(self.checkpoint_dir.iterdir()) if not p.name.startswith(".") and not p.is_symlink()
                   and is_diffusers_folder(p)] if self.checkpoint_dir.is_dir() else []
        taken, found = set(), []
        for path in [*files, *folders, *self.extra_folders]:  # hidden files are never served, so never listed
            name = path.stem if path.suffix == ".safetensors" and not path.is_dir() else path.name
            if name not in taken:
                taken.add(name)
                found.append(path)
        return found

    def entries(self) -> list[CheckpointEntry]:
        """Every checkpoint served, with its kind, card, or why it is unavailable."""
        found = []
        for path in self._candidates():
            folder = path.is_dir()
            try:
                signature = folder_signature(path) if folder else file_signature(path)
            except OSError:
                continue  # removed since the listing
            found.append(describe_entry(path, signature))
        return found

    def flops_per_image(self, model: LoadedModel) -> float:
        """FLOPs of one image through the model's network once (counted on a batch of one, once per file); a
        described model's on the meta device, its attention counted as this cache's device counts it."""
        key = model.sha256 or str(id(model))
        if key not in self._flops:
            device = self.device if model.weights else torch.device("meta")
            self._flops[key] = _count_flops(model, device, counted_as=self.counted_as)
        return self._flops[key]

    def measured_by(self, measurer) -> None:
        """A described cache's budget figures from where the networks run: `measurer.figures(names)` ->
        MeasuredFigures (a RayBackend asks a replica). Asked once here for every served file (the rate and those
        files' overheads); a file that is new or replaced later is asked for when first estimated."""
        if self.weights:
            raise ValueError("a cache that loads its networks measures them itself")
        self.measurer = measurer
        figures = measurer.figures([e.name for e in self.entries() if e.available])
        self._overheads.update(figures.overheads)
        if figures.device_type != self.counted_as:  # counts as the replicas' device counts (a CPU front, GPU replicas)
            self.counted_as = figures.device_type
            self._flops.clear()
        if self.budget.flops_per_second is None:  # a fixed rate (tests) stays as given
            self.budget = replace(self.budget, flops_per_second=figures.flops_per_second, machine_rate=None)

    def overhead_per_call(self, model: LoadedModel) -> float:
        """A network call's fixed cost in FLOP-equivalents: seconds of a batch-1 call x the rate now - its FLOPs
        (measured once per file, as it loads)."""
        key = model.sha256 or str(id(model))
        if not model.weights:
            return self._measured_elsewhere(model, key)
        if self.budget.call_seconds is not None:
            return self.budget.call_seconds * self.budget.rate
        if key not in self._overheads:
            # A noisy classifier's call is a gradient, about 3 forwards (network_work's passes): per forward here.
            # The seconds and the rate they are turned into FLOPs with come from the same moment (a probe on each
            # side of the timing), so a load that slows both cancels out of the overhead.
            passes = 3 if model.kind == "noisy-classifier" else 1
            before = self.budget.probe_rate()
            seconds = _seconds_per_call(model, self.device)
            rate = (before + self.budget.probe_rate()) / 2
            self._overheads[key] = max(0.0, seconds * rate - passes * self.flops_per_image(model)) / passes
        return self._overheads[key]

    def _measured_elsewhere(self, model: LoadedModel, key: str) -> float:
        """A described model's call overhead: as measured where the networks run, or the fixed budget's."""
        if key not in self._overheads:
            if self.measurer is None and self.budget.call_seconds is not None:  # a fixed budget, not bound
                return self.budget.call_seconds * self.budget.rate
            if self.measurer is not None:
                self._overheads.update(self.measurer.figures([model.name]).overheads)
        if key in self._overheads:
            return self._overheads[key]
        raise RequestError(f"checkpoint {model.name!r:.60} has not been measured where the networks run; try again")

    def network_work(self, model: LoadedModel, calls: int, images_per_call: int, passes: float = 1.0) -> Work:
        """`calls` calls of the model's network on `images_per_call` images each; `passes`: forward-equivalents
        per call (3 for a forward and a backward pass)."""
        evaluations = int(calls) * int(images_per_call)
        return Work(evaluations, evaluations * passes * self.flops_per_image(model),
                    int(calls) * passes * self.overhead_per_call(model))

    def estimate_seconds(self, work: Work) -> float:
        """How long `work` should take here now (the budget's rate, re-measured while the server lives)."""
        return self.budget.estimate_seconds(work)

    def names(self, *kinds: str) -> list[str]:
        """Available checkpoints of the given kinds, in listing order (files, then folders)."""
        return [e.name for e in self.entries() if e.available and e.kind in kinds]

    def few_step_names(self) -> list[str]:
        """Available denoisers meant for a few steps (their files name sampling defaults)."""
        return [e.name for e in self.entries() if e.available and e.kind == "denoiser" and e.few_step]

    def path_of(self, name: str) -> Path:
        if not isinstance(name, str) or not name:
            raise RequestError("checkpoint name must be a non-empty string")
        stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
        if "/" in stem or "\\" in stem or stem.startswith(".") or "\x00" in stem or len(stem) > 200:
            raise RequestError(f"checkpoint name {name[:80]!r} is not a plain file name in the checkpoint folder")
        path = self.checkpoint_dir / f"{stem}.safetensors"
        if path.is_file():
            return path
        for folder in [self.checkpoint_dir / name, self.checkpoint_dir / stem, *self.extra_folders]:  # a folder may
            if folder.name in (name, stem) and not folder.is_symlink() and is_diffusers_folder(folder):  # end in .safetensors
                return folder
        available = ", ".join(self.names(*GENERATIVE_KINDS)) or "none"
        raise RequestError(f"no checkpoint named {stem!r:.60} (available: {available})")

    def get(self, name: str) -> LoadedModel:
        path = self.path_of(name)
        folder = path.is_dir()
        signature_of = folder_signature if folder else file_signature
        with self._lock:
            try:
                signature = signature_of(path)
            except FileNotFoundError as error:
                self._models.pop(name, None)
                raise RequestError(f"checkpoint {name!r:.60} was removed") from error
            cached = self._models.get(name)
            if cached and cached[0] == signature:
                self._models.move_to_end(name)
                return cached[1]
            try:
                model = self._read(path, folder)
            except CheckpointError as error:
                self._models.pop(name, None)
                raise RequestError(f"checkpoint {name!r:.60} is unavailable: {error}") from error
            self.loads += 1
            if signature_of(path) != signature:  # replaced while we read it: do not serve a mix
                raise RequestError(f"checkpoint {name!r:.60} changed while loading; try again")
            self.flops_per_image(model)  # counted once, as it loads (before channels_last, see below) ...
            if not self.weights:  # a description: nothing to time or lay out (measured_by: the overhead)
                return self._keep(name, signature, model)
            if self.budget.bounded:  # ... and timed: a bounded budget never runs a model later (an unbounded one,
                self.overhead_per_call(model)  # the CLI's, times it only if an estimate is asked for)
            # Convolution weights in channels_last (NHWC), oneDNN's fast layout on a CPU (issue 30): fashion-diffusion's
            # forward 10 % faster at batch 16 and 8 % at 32, measured here, outputs within 2e-6 of NCHW. Inputs need
            # no change: a convolution with channels_last weights computes in that layout. After the FLOP count,
            # which torch's counter reads lower for some layers in this layout.
            model.network.to(memory_format=torch.channels_last)
            if self.compiler is not None and model.kind == "denoiser":
                model = replace(model, network=CompiledNetwork(model.network, self.compiler))
            return self._keep(name, signature, model)

    def _read(self, path: Path, folder: bool) -> LoadedModel:
        """The model at `path`: loaded on the device, or with weights=False described from its header."""
        if not self.weights:
            return describe_folder(path) if folder else describe_checkpoint(path)
        return load_folder(path, device=self.device) if folder else load_checkpoint(path, device=self.device)

    def _keep(self, name: str, signature: tuple, model: LoadedModel) -> LoadedModel:
        """Cache `model` as the newest, dropping the least recently used beyond capacity (under the lock)."""
        self._models[name] = (signature, model)
        self._models.move_to_end(name)
        while len(self._models) > self.capacity:
            self._models.popitem(last=False)
        return model

    def first_of_kind(self, kind: str) -> LoadedModel | None:
        names = self.names(kind)
        return self.get(names[0]) if names else None


def measure_figures(cache: ModelCache, names) -> MeasuredFigures:
    """The budget's figures for `names` as this cache measures them on its device (what a replica reports to a
    front that holds no network); a file that cannot be loaded is left out."""
    overheads = {}
    for name in names:
        try:
            model = cache.get(name)
        except RequestError:
            continue
        overheads[model.sha256] = cache.overhead_per_call(model)
    return MeasuredFigures(cache.budget.rate, overheads, cache.device.type)


# --- running a request ------------------------------------------------------------------------
Progress = Callable[[int, int], None]  # (network evaluations done, total)
Preview = Callable[[int, float, torch.Tensor, torch.Tensor], None]  # (step, t, x_t, x0_hat)


def sampler_options(request: SampleRequest) -> dict:
    """The request fields its sampler reads (sampling.SAMPLERS)."""
    return {name: getattr(request, name) for name in SAMPLERS[request.sampler].options}


def expected_nfe(request: SampleRequest) -> int:
    return SAMPLERS[request.sampler].nfe(int(request.steps), **sampler_options(request))


def _count_flops(model: LoadedModel, device, counted_as: str | None = None) -> float:
    """One image through the network (a denoiser at mid-noise without guidance, a flow's decode, a classifier's
    forward). On the meta device (a described model) attention takes the kernel `counted_as` would run, so the count
    is the one that device gives (_AttentionAs)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *image_shape(model), device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device) if model.class_names else None
    counter = FlopCounterMode(display=False)
    attention = _AttentionAs(counted_as) if device.type == "meta" else _nothing()
    with torch.inference_mode(), attention, counter:
        if model.kind == "normalizing-flow":
            model.network.decode(x, labels)
        elif model.kind == "denoiser":
            Denoiser(model.network, model.schedule, model.parameterization, labels=labels)(x, 0.5)
        else:
            model.network(x, torch.zeros(1, device=device))
    return float(max(counter.get_total_flops(), 1))


class _AttentionAs(torch.overrides.TorchFunctionMode):
    """Scaled dot-product attention on the meta device as a `device_type` device runs it. Where a CPU picks its fused
    `_scaled_dot_product_flash_attention_for_cpu` (contiguous heads, as in fashion-dit), torch's FLOP counter has no
    formula for it (0 FLOPs: fashion-dit counts 464,334,848 on a CPU), while the meta device always decomposes
    attention into matmuls that it counts (582,348,800); the counter's formula for CUDA's fused kernels
    counts those two matmuls too (not checked on a GPU here).
    So for a CPU a described model asks torch's own choice on empty CPU tensors of the same shape and strides and
    takes the CPU op where it would (the op has a meta kernel): the count is the loaded model's on that device."""

    def __init__(self, device_type: str | None):
        super().__init__()
        self.cpu = device_type == "cpu"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.cpu and func is torch.nn.functional.scaled_dot_product_attention:
            options = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale"), args[3:])) | kwargs
            plain = {"dropout_p": options.get("dropout_p", 0.0), "is_causal": options.get("is_causal", False),
                     "scale": options.get("scale")}
            if options.get("attn_mask") is None and set(options) <= {"attn_mask", *plain} \
                    and _cpu_picks_flash(args[:3], plain):
                return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(*args[:3], **plain)[0]
        return func(*args, **kwargs)


def _cpu_picks_flash(qkv, options: dict) -> bool:
    """Whether a CPU runs attention on tensors of these shapes, strides and dtype with its fused flash kernel."""
    like = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu") for t in qkv]
    return torch._fused_sdp_choice(*like, **options) == torch.nn.attention.SDPBackend.FLASH_ATTENTION.value


@contextmanager
def _nothing():
    yield


def _seconds_per_call(model: LoadedModel, device, repeats: int = 3) -> float:
    """Wall seconds of one call on a batch of one (the median of `repeats`, after a warm-up call)."""
    x = torch.zeros(1, *image_shape(model), device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device) if model.class_names else None
    if model.kind == "normalizing-flow":
        call = lambda: model.network.decode(x, labels)  # noqa: E731
    elif model.kind == "denoiser":
        denoise = Denoiser(model.network, model.schedule, model.parameterization, labels=labels)
        call = lambda: denoise(x, 0.5)  # noqa: E731
    elif model.kind == "noisy-classifier":  # it serves as guidance: a forward and a backward pass, timed whole
        call = lambda: classifier_log_prob_gradient(model.network, x, 1.0, 1.0, 0.0, labels)  # noqa: E731
    else:
        call = lambda: model.network(x, torch.zeros(1, device=device))  # noqa: E731
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def request_work(cache: ModelCache, request: SampleRequest | FlowRequest, model: LoadedModel | None = None) -> Work:
    """What a valid request will cost (check_request it first): per network evaluation one call of every network a
    step runs, on the request's images: the model (both rows of classifier-free guidance in one call), autoguidance's
    weaker model, and the noisy classifier's forward and backward pass (about 3 forwards)."""
    model = model or cache.get(request.checkpoint)
    images = int(request.batch_size)
    if isinstance(request, FlowRequest):
        return cache.network_work(model, 1, images)
    calls = expected_nfe(request)
    work = cache.network_work(model, calls, images * (2 if request.guidance == "cfg" else 1))
    if request.guidance == "autoguidance":
        work += cache.network_work(cache.get(guide_name(request)), calls, images)
    elif request.guidance == "classifier":
        work += cache.network_work(cache.first_of_kind("noisy-classifier"), calls, images, passes=3)
    return work


def check_work(cache: ModelCache, requests, what: str = "this request", extra: Work = Work(),
               model: LoadedModel | None = None) -> float:
    """Every request's cost (plus `extra`) against the cache's budget, before any work; the estimated seconds.
    `model`: the one a study pinned for all its requests."""
    if not cache.budget.bounded:  # nothing to refuse: no rate probe, no timing of the networks
        return float("inf")
    total = sum((request_work(cache, r, model) for r in requests), extra)
    try:
        return cache.budget.check(total, what)
    except ValueError as error:
        raise RequestError(str(error)) from None


def load_for(cache: ModelCache, request: SampleRequest | FlowRequest, model: LoadedModel | None = None) -> LoadedModel:
    """The request's checkpoint (or `model`, one a study loaded once for all its cells), refused with a
    message when the request does not fit its kind."""
    name = request.checkpoint
    if model is None:
        model = cache.get(name)
    elif model.path is not None and model.name != name:
        raise RequestError(f"request for checkpoint {name!r:.60} given the model of {model.name!r}")
    if model.kind == "normalizing-flow" and not isinstance(request, FlowRequest):
        raise RequestError(f"checkpoint {name!r:.60} is a normalizing flow: it decodes noise in one exact pass and "
                           f"takes a temperature, not a sampler, steps or guidance")
    if model.kind == "denoiser" and not isinstance(request, SampleRequest):
        raise RequestError(f"checkpoint {name!r:.60} is a denoiser: it takes a sampler and steps, not a temperature")
    if model.kind not in GENERATIVE_KINDS:
        raise RequestError(f"checkpoint {name!r:.60} (kind {model.kind!r}) does not generate images: it is neither a "
                           f"denoiser nor a normalizing flow")
    return model


def prepare(cache: ModelCache, request: SampleRequest, model: LoadedModel | None = None):
    """Load and validate a denoiser request; returns (model, classifier or None, autoguidance's guide or None)."""
    model = load_for(cache, request, model)
    classifier = cache.first_of_kind("noisy-classifier") if request.guidance == "classifier" else None
    validate_request(request, model, has_classifier=classifier is not None, max_batch=cache.max_batch)
    if classifier is not None and (image_shape(classifier), classifier.class_names) != (image_shape(model), model.class_names):
        raise RequestError(f"the noisy classifier judges {image_shape(classifier)} images of {len(classifier.class_names)} "
                           f"classes; checkpoint {request.checkpoint!r:.60} makes {image_shape(model)} images of "
                           f"{len(model.class_names)} classes, so classifier guidance does not apply")
    guide = load_guide(cache, request, model) if request.guidance == "autoguidance" else None
    return model, classifier, guide


def load_guide(cache: ModelCache, request: SampleRequest, model: LoadedModel) -> LoadedModel:
    """Autoguidance's weaker model, refused unless it is a denoiser of the same family: same schedule, image
    shape and classes (Karras et al. 2024 guide with a smaller, shorter-trained version of the same model)."""
    name = guide_name(request)
    try:
        guide = cache.get(name)
    except RequestError as error:
        hint = "" if request.guide else f" (autoguidance looks for {name!r:.60} unless you name a guide)"
        raise RequestError(f"autoguidance needs a weaker model of the same family: {error}{hint}") from None
    if guide.kind != "denoiser":
        raise RequestError(f"autoguidance's guide {name!r:.60} is a {guide.kind}, not a denoiser")
    same = (guide.schedule.to_config(), image_shape(guide), guide.class_names) == \
           (model.schedule.to_config(), image_shape(model), model.class_names)
    if not same:
        raise RequestError(f"autoguidance's guide {name!r:.60} is not of {request.checkpoint!r:.60}'s family: it needs the "
                           f"same noise schedule, image shape and classes")
    return guide


def check_request(cache: ModelCache, request: SampleRequest | FlowRequest, model: LoadedModel | None = None) -> LoadedModel:
    """Load and validate without sampling, so a study can refuse a bad cell before any work starts."""
    if isinstance(request, FlowRequest):
        model = load_for(cache, request, model)
        validate_flow_request(request, model, max_batch=cache.max_batch)
        return model
    return prepare(cache, request, model)[0]


def class_index_of(value, class_names) -> int:
    """A class typed by index ("7", 7) or by name, in any case ("sneaker"), as an index of `class_names`; a
    RequestError listing the classes otherwise."""
    names = list(class_names)
    text = str(value).strip()
    if isinstance(value, int) and not isinstance(value, bool) or text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < len(names):
            return index
        raise RequestError(f"class {index} is out of range: this checkpoint has classes 0-{len(names) - 1}")
    by_name = {name.casefold(): i for i, name in enumerate(names)}
    if text.casefold() in by_name:
        return by_name[text.casefold()]
    listed = ", ".join(f"{i} {name}" for i, name in enumerate(names)) or "none"
    raise RequestError(f"class {text[:40]!r} is neither an index nor a class name of this checkpoint ({listed})")


def image_shape(model: LoadedModel) -> tuple[int, int, int]:
    return model.config["image_channels"], model.config["image_size"], model.config["image_size"]


def _starting_noise(request, model: LoadedModel, x_T: torch.Tensor | None, device, generators=None) -> torch.Tensor:
    """x_T drawn from (seed, index), or the given one after checking its shape. With `generators` (the ones the
    sampler then draws its per-step noise from) x_T is their first draw, so no step reuses x_T's numbers."""
    shape = (int(request.batch_size), *image_shape(model))
    if x_T is None:
        if generators is None:
            generators = image_generators(int(request.seed), int(request.batch_size), int(request.first_index))
        return draw_noise(generators, shape[1:], device)
    if tuple(x_T.shape) != shape:
        raise RequestError(f"starting noise has shape {tuple(x_T.shape)}, checkpoint {request.checkpoint!r:.60} "
                           f"needs {shape}")
    return x_T.to(device=device, dtype=torch.float32)


def _labels(request, device):
    if request.class_index is None:
        return None
    return torch.full((int(request.batch_size),), int(request.class_index), dtype=torch.long, device=device)


def run_flow_request(cache: ModelCache, request: FlowRequest, x_T: torch.Tensor | None = None,
                     model: LoadedModel | None = None) -> SampleResult:
    """x = decode(T z, y): one exact pass of the inverse flow (NFE 1)."""
    model = load_for(cache, request, model)
    validate_flow_request(request, model, max_batch=cache.max_batch)
    check_work(cache, [request], model=model)
    started = time.perf_counter()
    with _sampling_failures("decoding"), torch.inference_mode():
        z = float(request.temperature) * _starting_noise(request, model, x_T, cache.device)
        images = _finite(model.network.decode(z, _labels(request, cache.device)).float(), request).clamp(-1, 1).cpu()
    return SampleResult(images, 1, time.perf_counter() - started, [], request, checkpoint_sha256=model.sha256,
                        class_names=model.class_names)


def run_request(cache: ModelCache, request: SampleRequest | FlowRequest, progress: Progress | None = None,
                preview: Preview | None = None, record_trajectory: bool = False,
                trace_guidance: bool = False, x_T: torch.Tensor | None = None,
                model: LoadedModel | None = None) -> SampleResult:
    """Sample one request. RequestError for bad input, SamplingError for a failure while sampling.

    x_T, if given, is the starting noise (B, C, H, W) instead of the seed's; DDPM and DDIM with eta > 0 still
    draw their per-step noise from (seed, index). `model`, if given, is used instead of the cache's current
    version of the checkpoint (a study loads it once, so all its cells come from the same file)."""
    if isinstance(request, FlowRequest):
        return run_flow_request(cache, request, x_T, model)
    model, classifier, guide = prepare(cache, request, model)
    check_work(cache, [request], model=model)
    device = cache.device
    schedule = model.schedule
    trajectory, total = [], expected_nfe(request)
    started = time.perf_counter()
    with _sampling_failures("sampling"):
        with torch.inference_mode(), _autocast(device):
            denoise = Denoiser(model.network, schedule, model.parameterization, labels=_labels(request, device),
                               guidance=guidance_of(request), classifier=classifier.network if classifier else None,
                               guide=(guide.network, guide.parameterization) if guide else None,
                               self_condition=self_conditioning(request, model), clip_x0=clip_x0(request, model),
                               trace_guidance=trace_guidance)
            counted = _counting(denoise, progress, total)
            generators = image_generators(int(request.seed), int(request.batch_size), int(request.first_index))
            x_T = _starting_noise(request, model, x_T, device, generators)
            grid = time_grid(schedule, int(request.steps), request.spacing)

            def callback(step, t, x_t, x0_hat):
                if record_trajectory:
                    trajectory.append((step, t, x_t.float().cpu(), x0_hat.float().cpu()))
                if preview:
                    preview(step, t, x_t, x0_hat)

            images = SAMPLERS[request.sampler].sample(counted, x_T, grid, schedule=schedule, generators=generators,
                                                      callback=callback, **sampler_options(request))
            images = _finite(images.float(), request).clamp(-1, 1).cpu()
    seconds = time.perf_counter() - started
    return SampleResult(images, denoise.nfe, seconds, denoise.trace, request, trajectory, model.sha256,
                        model.class_names)


@contextmanager
def _sampling_failures(what: str):
    """A failure while sampling becomes this request's SamplingError (out of memory: with a hint); the
    backend keeps serving. RequestError and SamplingError pass through as they are."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        _free_cuda()
        raise SamplingError("the device ran out of memory for this request; try a smaller batch") from error
    except (RequestError, SamplingError):
        raise
    except RuntimeError as error:
        raise SamplingError(f"{what} failed: {error}") from error


def _finite(images: torch.Tensor, request) -> torch.Tensor:
    """The images, or a SamplingError if any value is NaN or infinite (clamping would hide it as black)."""
    bad = (~torch.isfinite(images)).flatten(1).any(dim=1)
    if bool(bad.any()):
        raise SamplingError(f"checkpoint {request.checkpoint!r:.60} produced non-finite values (NaN or inf) in "
                            f"{int(bad.sum())} of {len(images)} images; the model is broken for these settings")
    return images


def _counting(denoise: Denoiser, progress: Progress | None, total: int):
    if progress is None:
        return denoise

    def counted(x_t, t):
        out = denoise(x_t, t)
        progress(denoise.nfe, total)
        return out

    return counted


def _autocast(device: torch.device):
    # bf16 autocast on CUDA GPUs that support it (the network only; samplers work in fp32).
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _free_cuda():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
