"""One look at the lab: a LabRequest (validated, plain data) -> LabView, the samples, paths, field, densities and
exact numbers that the app's 2-D lab tab draws. Mixtures, support thresholds, references and trained models are
cached per distribution in memory (a learned model is trained at its first use, in a few seconds)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from ..core.guidance import Guidance
from ..core.likelihood import ODELikelihoodConfig, ode_log_likelihood
from ..core.sampling import ODE_SOLVERS, SAMPLERS
from ..core.schedules import SCHEDULES, Schedule, time_grid
from ..core.straightness import measure_straightness
from .exact import ExactNetwork, log_density
from .metrics import ExactReference, SampleQuality, exact_reference, exact_samples, support_thresholds
from .mixture import DISTRIBUTIONS, Mixture, balanced_labels, widened
from .report import WEAK_FACTOR
from .run import LabModel, LabSamples, sample_points
from .train import train_mlp, train_student

MODELS = {"exact": "exact (closed form)", "mlp": "learned MLP", "reflow": "reflow student (one reflow of the exact model)"}
GUIDANCE = ("none", "cfg", "autoguidance")
ARROWS = ("x0", "velocity")  # the field panel: x0_hat - x_t, or the flow velocity x0_hat - eps_hat (towards the data)
PATH_ROWS = 12  # trajectories drawn from the first points' shared starting noise
LIKELIHOOD_POINTS = 8
TEACHER_STEPS = 64  # the exact teacher's paths in the teacher-student panel (Heun)
WEAK_MLP_STEPS, WEAK_MLP_WIDTH = 200, 32  # autoguidance's guide for the learned MLP: smaller and trained less
TRAINED = ("mlp", "weak-mlp", "reflow")  # the lab models that are trained (at first use), not written down
# Each numeric field's range: (low, high, whole number).
RANGES = {"steps": (1, 200, True), "scale": (0.0, 20.0, False), "rescale": (0.0, 1.0, False),
          "apg_eta": (0.0, 1.0, False), "seed": (0, 2**31 - 1, True), "noise_level": (0.01, 1.0, False),
          "points": (50, 2000, True)}


@dataclass(frozen=True)
class LabRequest:
    distribution: str = "tree"
    model: str = "exact"
    sampler: str = "ode"
    solver: str = "heun"
    steps: int = 20
    schedule: str = "flow"
    guidance: str = "none"
    scale: float = 3.0  # w: 0 unconditional, 1 conditional, > 1 guided
    rescale: float = 0.0  # CFG rescale phi (Lin et al. 2024)
    apg_eta: float = 1.0  # APG's weight on the parallel part (Sadat et al. 2024); 1 is plain guidance
    seed: int = 0
    noise_level: float = 0.5  # t of the field and marginal-density panel
    arrows: str = "x0"  # one of ARROWS
    points: int = 500

    def __post_init__(self):
        choices = {"distribution": tuple(DISTRIBUTIONS), "model": tuple(MODELS), "sampler": tuple(SAMPLERS),
                   "solver": ODE_SOLVERS, "schedule": SCHEDULES, "guidance": GUIDANCE, "arrows": ARROWS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {str(getattr(self, name))[:40]!r}")
        for name, (low, high, whole) in RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not low <= value <= high or (whole and value != int(value)):
                kind = "a whole number" if whole else "a number"
                raise ValueError(f"{name.replace('_', ' ')} must be {kind} in [{low:g}, {high:g}], got {value!r:.40}")
        if self.sampler == "langevin" and self.steps < 2:
            raise ValueError("steps must be at least 2 for annealed Langevin (it runs on the grid's inner levels)")
        if self.guidance == "none" and (self.rescale != 0 or self.apg_eta != 1):
            raise ValueError("CFG rescale and APG eta modify guidance: choose CFG or autoguidance, or set CFG rescale "
                             "to 0 and APG eta to 1")
        if self.guidance == "autoguidance" and self.model == "reflow":
            raise ValueError("autoguidance needs a weaker model of the same family: choose the exact model or the MLP")

    @property
    def guidance_setting(self) -> Guidance:
        return Guidance(self.guidance, self.scale if self.guidance != "none" else 1.0, rescale=self.rescale,
                        apg_eta=self.apg_eta)


# --- cached per distribution ---------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def lab_mixture(name: str) -> Mixture:
    return DISTRIBUTIONS[name]()


@lru_cache(maxsize=None)
def lab_thresholds(name: str) -> torch.Tensor:
    return support_thresholds(lab_mixture(name))


@lru_cache(maxsize=16)
def lab_reference(name: str, points: int) -> ExactReference:
    mix = lab_mixture(name)
    return exact_reference(mix, balanced_labels(mix, points), lab_thresholds(name))


_MODELS: dict[tuple[str, str], LabModel] = {}  # (distribution, kind) -> model, built or trained at first use
_BUILDING: dict[tuple[str, str], threading.Lock] = {}  # one lock per model: three first users train it once
_BUILDING_LOCK = threading.Lock()


def lab_model(name: str, kind: str) -> LabModel:
    """exact, weak-exact (components WEAK_FACTOR wider), mlp (trained at first use, ~3 s), weak-mlp (smaller and
    trained less: autoguidance's guide for the MLP), reflow (one reflow of the exact model, ~3 s). Users asking for a
    model being trained wait for it; if its training is stopped, the next one trains it."""
    key = (name, kind)
    if key not in _MODELS:
        with _BUILDING_LOCK:
            lock = _BUILDING.setdefault(key, threading.Lock())
        with lock:
            if key not in _MODELS:
                _MODELS[key] = build_lab_model(lab_mixture(name), kind)
    return _MODELS[key]


def is_ready(name: str, kind: str) -> bool:
    return (name, kind) in _MODELS


def build_lab_model(mix: Mixture, kind: str) -> LabModel:
    if kind == "exact":
        return LabModel(ExactNetwork(mix), "x0")
    if kind == "weak-exact":
        return LabModel(ExactNetwork(widened(mix, WEAK_FACTOR)), "x0")
    if kind == "mlp":
        return train_mlp(mix)
    if kind == "weak-mlp":  # Karras et al. 2024's guide: the same kind of model, smaller and trained less
        return train_mlp(mix, steps=WEAK_MLP_STEPS, hidden=WEAK_MLP_WIDTH, seed=1)
    if kind == "reflow":
        return train_student(LabModel(ExactNetwork(mix), "x0"), mix.num_classes)
    raise ValueError(f"unknown lab model {kind!r}")


# --- the view ----------------------------------------------------------------------------------------------------
@dataclass
class Field:
    t: float
    grid: torch.Tensor  # (G * G, 2) points x_t
    arrows: torch.Tensor  # (G * G, 2) x0_hat - x_t, or the flow velocity towards the data, x0_hat - eps_hat
    density: torch.Tensor  # (D, D) exact p_t of the field's class (or the mixture), on `extent`
    extent: tuple[float, float, float, float]
    label: int | None  # the field's class, None: unconditional


@dataclass
class LabView:
    request: LabRequest
    mixture: Mixture
    labels: torch.Tensor  # (N,)
    run: LabSamples  # the requested run
    quality: SampleQuality
    field: Field
    cfg: LabSamples  # classifier-free guidance at the request's scale (same model, same noise)
    autoguidance: LabSamples | None  # autoguidance at that scale (None for the reflow student)
    cfg_quality: SampleQuality
    autoguidance_quality: SampleQuality | None
    teacher_paths: torch.Tensor  # (S + 1, P, 2) the exact model's probability-flow paths (flow schedule)
    student_paths: torch.Tensor  # (steps + 1, P, 2) the reflow student's Euler paths from the same noise
    straightness: dict[str, float]  # teacher, student
    log_likelihood: float  # mean PF-ODE log p(x | y) of LIKELIHOOD_POINTS exact points under the model
    exact_log_density: float  # their mean exact log p(x | y)
    density: torch.Tensor  # (D, D) exact log p_0(x) of the mixture, for the contours
    extent: tuple[float, float, float, float] = (-2.6, 2.6, -2.6, 2.6)
    notes: list[str] = field(default_factory=list)


def sampler_options(request: LabRequest) -> dict:
    return {"solver": request.solver} if request.sampler == "ode" else {}


def grid_spacing(request: LabRequest) -> str:
    """Log-SNR spacing for the reverse SDE (its Euler-Maruyama steps must stay small in log-SNR), else uniform."""
    return "log-snr" if request.sampler == "sde" else "uniform"


def guide_for(request: LabRequest) -> LabModel | None:
    return lab_model(request.distribution, "weak-" + request.model) if request.model != "reflow" else None


def density_grid(mix: Mixture, extent, resolution: int, alpha: float, sigma: float, label: int | None) -> torch.Tensor:
    """(R, R) exact log p_t(x) on a grid over extent (rows: y from low to high)."""
    xs = torch.linspace(extent[0], extent[1], resolution, dtype=torch.float64)
    ys = torch.linspace(extent[2], extent[3], resolution, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    labels = None if label is None else torch.full((len(points),), label)
    return log_density(mix, points, alpha, sigma, labels).reshape(resolution, resolution)


@lru_cache(maxsize=None)
def data_density(name: str) -> torch.Tensor:
    """(160, 160) exact log p_0(x) of the mixture over LabView.extent, for the contours."""
    return density_grid(lab_mixture(name), LabView.extent, 160, 1.0, 0.0, None)


def model_field(request: LabRequest, model: LabModel, extent, size: int = 17) -> Field:
    """The model's x0 estimate (as x0_hat - x_t) or flow velocity towards the data (x0_hat - eps_hat: minus
    straightness.flow_velocity) on a grid of x_t at t = noise_level, with the exact p_t under it.
    Unguided models show the unconditional field; guided ones the first class's (guidance needs a class)."""
    mix, schedule = lab_mixture(request.distribution), Schedule(request.schedule)
    label = 0 if request.guidance != "none" else None
    xs = torch.linspace(extent[0], extent[1], size)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    labels = torch.full((len(grid),), mix.num_classes if label is None else label)
    denoise = model.denoiser(schedule, labels, request.guidance_setting if label is not None else Guidance(),
                             guide_for(request) if request.guidance == "autoguidance" else None)
    with torch.no_grad():
        x0, eps = denoise(grid, request.noise_level)
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(request.noise_level, dtype=torch.float64)))
    arrows = x0 - grid if request.arrows == "x0" else x0 - eps
    return Field(request.noise_level, grid, arrows.float(),
                 density_grid(mix, extent, 90, alpha, sigma, label).exp(), extent, label)


@lru_cache(maxsize=64)
def mean_log_likelihood(distribution: str, kind: str, schedule: str, seed: int) -> tuple[float, float]:
    """Mean PF-ODE log p(x | y) (exact divergence, dopri5 at 1e-4) of a few exact points, and their exact mean."""
    mix, model = lab_mixture(distribution), lab_model(distribution, kind)
    labels = balanced_labels(mix, LIKELIHOOD_POINTS)
    x = exact_samples(mix, labels, seed=seed).float()
    sched = Schedule(schedule)
    result = ode_log_likelihood(model.denoiser(sched, labels), sched, x,
                                config=ODELikelihoodConfig(rtol=1e-4, atol=1e-4, divergence="exact"))
    return float(result.log_density.mean()), float(log_density(mix, x, 1.0, 0.0, labels).mean())


@lru_cache(maxsize=64)
def teacher_and_student(distribution: str, seed: int, steps: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Paths of the exact teacher (Heun, TEACHER_STEPS) and the reflow student (Euler, `steps`) from the same noise
    on the flow schedule, with the straightness of each (DDIM readout on the same grid)."""
    mix, flow = lab_mixture(distribution), Schedule("flow")
    labels = balanced_labels(mix, PATH_ROWS)
    teacher, student = lab_model(distribution, "exact"), lab_model(distribution, "reflow")
    x_T = sample_points(teacher, flow, labels, steps=1, seed=seed).x_T
    paths = {}
    for name, model, solver, n in (("teacher", teacher, "heun", TEACHER_STEPS), ("student", student, "euler", steps)):
        paths[name] = sample_points(model, flow, labels, sampler="ode", steps=n, options={"solver": solver},
                                    path_rows=PATH_ROWS, x_T=x_T).paths
    straightness = {name: measure_straightness(model.denoiser(flow, labels), x_T, time_grid(flow, TEACHER_STEPS),
                                               flow).mean for name, model in (("teacher", teacher), ("student", student))}
    return paths["teacher"], paths["student"], straightness


def lab_view(request: LabRequest) -> LabView:
    """Everything the tab shows for one request; the models it needs are trained first if this is their first use."""
    mix = lab_mixture(request.distribution)
    started = time.monotonic()
    untrained = [kind for kind in (request.model, "weak-" + request.model, "reflow")
                 if kind in TRAINED and not is_ready(request.distribution, kind)]
    for kind in untrained:
        lab_model(request.distribution, kind)
    model, guide = lab_model(request.distribution, request.model), guide_for(request)
    reference = lab_reference(request.distribution, request.points)
    labels, schedule = reference.labels, Schedule(request.schedule)
    common = dict(sampler=request.sampler, steps=request.steps, options=sampler_options(request),
                  seed=request.seed, spacing=grid_spacing(request), path_rows=PATH_ROWS)
    run = sample_points(model, schedule, labels, guidance=request.guidance_setting,
                        guide=guide if request.guidance == "autoguidance" else None, **common)
    scale = request.scale if request.guidance != "none" else 3.0

    def compared(mode: str):  # the run itself when it is this plain method at this scale
        if guide is None and mode == "autoguidance":
            return None
        if request.guidance_setting == Guidance(mode, scale):
            return run
        return sample_points(model, schedule, labels, guidance=Guidance(mode, scale),
                             guide=guide if mode == "autoguidance" else None, x_T=run.x_T, **common)

    cfg, auto = compared("cfg"), compared("autoguidance")
    teacher_paths, student_paths, straightness = teacher_and_student(request.distribution, request.seed, request.steps)
    log_likelihood, exact_log_p = mean_log_likelihood(request.distribution, request.model, request.schedule,
                                                      request.seed)
    view = LabView(request, mix, labels, run, reference.quality(run.samples), model_field(request, model, LabView.extent),
                   cfg, auto, reference.quality(cfg.samples), None if auto is None else reference.quality(auto.samples),
                   teacher_paths, student_paths, straightness, log_likelihood, exact_log_p,
                   data_density(request.distribution))
    if untrained:
        view.notes.append(f"Trained just now for {request.distribution} (first use, {time.monotonic() - started:.1f} s): "
                          f"{', '.join(untrained)}; later changes reuse them.")
    if request.guidance == "none":
        view.notes.append(f"CFG and autoguidance are compared at w = {scale:g} (guidance is off in the main run).")
    return view
