"""The lab's two readings for docs/evaluation/lab2d (python -m diffusion lab2d-report):

    convergence order   each deterministic solver's error against a reference solution of the same ODE, on the
                        exact denoiser, against steps; the fitted log-log slope is minus the solver's order
    guidance support    share of samples outside their class's support and distance to the class-conditional
                        distribution, for classifier-free guidance and autoguidance (Karras et al. 2024) at equal w
    one-step students   the same two numbers for a learned MLP teacher, its reflow student and the student after
                        adversarial distillation (adversarial.py), at one and two steps, beside the exact model
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.guidance import Guidance
from ..core.schedules import Schedule
from .adversarial import AdversarialConfig, train_adversarial_student
from .exact import ExactNetwork
from .metrics import SampleQuality, exact_reference
from .mixture import DISTRIBUTIONS, Mixture, balanced_labels, widened
from .run import LabModel, sample_points, starting_noise
from .train import train_mlp, train_student

# label -> (sampler, options, theoretical order). DDIM (eta 0) is ODE-Euler in data-prediction variables.
SOLVERS = {
    "DDIM (eta 0)": ("ddim", {}, 1),
    "ODE Euler": ("ode", {"solver": "euler"}, 1),
    "ODE Heun": ("ode", {"solver": "heun"}, 2),
    "DPM-Solver++(2M)": ("ode", {"solver": "dpm++2m"}, 2),
}
CONVERGENCE_SCHEDULE, CONVERGENCE_SPACING = "vp-cosine", "log-snr"
REPORT_FILES = ("convergence.png", "README.md")
WEAK_FACTOR = 2.0  # autoguidance's guide: every component's standard deviation doubled


@dataclass(frozen=True)
class ConvergenceRow:
    solver: str
    order: int  # the theoretical one
    steps: tuple[int, ...]
    errors: tuple[float, ...]  # mean distance of the end points to the reference solution's

    @property
    def slope(self) -> float:
        return fitted_slope(self.steps, self.errors)


def fitted_slope(steps, errors) -> float:
    """Least-squares slope of log(error) against log(steps): -order for a solver of that order."""
    x, y = torch.tensor(steps, dtype=torch.float64).log(), torch.tensor(errors, dtype=torch.float64).log()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x * x).sum())


def convergence_study(mix: Mixture, *, steps=(24, 48, 96, 192), count: int = 128, reference_steps: int = 1536,
                      schedule: str = CONVERGENCE_SCHEDULE, spacing: str = CONVERGENCE_SPACING) -> list[ConvergenceRow]:
    """Every solver of SOLVERS from the same noise (class-conditional, unguided, exact denoiser) against the
    DPM-Solver++(2M) solution at `reference_steps` steps on the same grid family."""
    model, sched = LabModel(ExactNetwork(mix), "x0"), Schedule(schedule)
    labels = balanced_labels(mix, count)

    def solve(sampler, options, n):
        return sample_points(model, sched, labels, sampler=sampler, steps=n, options=options, spacing=spacing).samples

    reference = solve("ode", {"solver": "dpm++2m"}, reference_steps).double()
    rows = []
    for label, (sampler, options, order) in SOLVERS.items():
        errors = tuple(float((solve(sampler, options, n).double() - reference).norm(dim=1).mean()) for n in steps)
        rows.append(ConvergenceRow(label, order, tuple(steps), errors))
    return rows


@dataclass(frozen=True)
class GuidanceRow:
    scale: float
    cfg: SampleQuality
    autoguidance: SampleQuality


def guidance_support(mix: Mixture, *, scales=(1.0, 2.0, 3.0, 5.0, 8.0), count: int = 2000, steps: int = 30,
                     weak_factor: float = WEAK_FACTOR) -> list[GuidanceRow]:
    """CFG and autoguidance (guide: the mixture with components widened by weak_factor) at each scale, from the same
    noise with balanced labels: vp-cosine, ODE Heun."""
    model, weak = LabModel(ExactNetwork(mix), "x0"), LabModel(ExactNetwork(widened(mix, weak_factor)), "x0")
    labels, sched = balanced_labels(mix, count), Schedule("vp-cosine")
    reference = exact_reference(mix, labels)
    rows = []
    for w in scales:
        run = {mode: sample_points(model, sched, labels, sampler="ode", steps=steps, options={"solver": "heun"},
                                   guidance=Guidance(mode, w), guide=weak if mode == "autoguidance" else None).samples
               for mode in ("cfg", "autoguidance")}
        rows.append(GuidanceRow(w, reference.quality(run["cfg"]), reference.quality(run["autoguidance"])))
    return rows


@dataclass(frozen=True)
class StudentRow:
    model: str
    steps: int
    solver: str
    quality: SampleQuality


def one_step_students(mix: Mixture, *, count: int = 2000, train_steps: int = 1500,
                      adversarial: AdversarialConfig = AdversarialConfig()) -> list[StudentRow]:
    """The exact model, a learned MLP teacher, its reflow student and that student after adversarial distillation,
    sampled from the same noise (flow schedule, classes balanced, no guidance)."""
    teacher = train_mlp(mix, steps=train_steps)
    student = train_student(teacher, mix.num_classes, steps=train_steps)
    distilled = train_adversarial_student(teacher, student, mix, adversarial)
    labels = balanced_labels(mix, count)
    reference, x_T = exact_reference(mix, labels), starting_noise(0, count)
    runs = [("exact model", LabModel(ExactNetwork(mix), "x0"), 30, "heun"), ("MLP teacher", teacher, 30, "heun"),
            ("MLP teacher", teacher, 1, "euler"), ("reflow student", student, 1, "euler"),
            ("reflow student", student, 2, "euler"), ("adversarially distilled student", distilled, 1, "euler"),
            ("adversarially distilled student", distilled, 2, "euler")]
    return [StudentRow(label, steps, solver, reference.quality(
        sample_points(model, Schedule("flow"), labels, sampler="ode", steps=steps, options={"solver": solver},
                      x_T=x_T).samples)) for label, model, steps, solver in runs]


def students_markdown(name: str, rows: list[StudentRow]) -> str:
    lines = [f"**{name}** (noise floor of the distance: {rows[0].quality.noise_floor:.3f})", "",
             "| model | steps (ODE solver) | outside support | distance |", "|---|---|---|---|"]
    lines += [f"| {r.model} | {r.steps} ({r.solver}) | {r.quality.outside_share:.1%} | {r.quality.distance:.3f} |"
              for r in rows]
    return "\n".join(lines)


def plot_convergence(rows: list[ConvergenceRow], path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for row, marker, size in zip(rows, "osD^", (11, 5, 6, 6)):  # DDIM's large hollow circles ring ODE-Euler's
        ax.loglog(row.steps, row.errors, marker=marker, markersize=size, markerfacecolor="none" if size > 10 else None,
                  label=f"{row.solver}: slope {row.slope:.2f} (order {row.order})")
    first = rows[0]
    for order, style in ((1, ":"), (2, "--")):  # guide lines through the first point of the first solver
        ax.loglog(first.steps, [first.errors[0] * (first.steps[0] / n) ** order for n in first.steps], "k" + style,
                  linewidth=0.8, label=f"steps^-{order}")
    ax.set_xlabel("steps")
    ax.set_ylabel("mean |x_0 - x_0 (reference)|")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def convergence_markdown(rows: list[ConvergenceRow]) -> str:
    header = "| solver | order | " + " | ".join(f"{n} steps" for n in rows[0].steps) + " | fitted slope |"
    lines = [header, "|" + "---|" * (len(rows[0].steps) + 3)]
    for row in rows:
        lines.append(f"| {row.solver} | {row.order} | " + " | ".join(f"{e:.2e}" for e in row.errors)
                     + f" | {row.slope:.2f} |")
    return "\n".join(lines)


def guidance_markdown(name: str, rows: list[GuidanceRow]) -> str:
    lines = [f"**{name}** (noise floor of the distance: {rows[0].cfg.noise_floor:.3f})", "",
             "| w | CFG: outside support | CFG: distance | autoguidance: outside support | autoguidance: distance |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.scale:g} | {row.cfg.outside_share:.1%} | {row.cfg.distance:.3f} | "
                     f"{row.autoguidance.outside_share:.1%} | {row.autoguidance.distance:.3f} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class ReportSettings:
    convergence_distribution: str = "rings"
    steps: tuple[int, ...] = (24, 48, 96, 192)
    count: int = 128
    reference_steps: int = 1536
    guidance_distributions: tuple[str, ...] = ("rings", "spirals", "tree")
    scales: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 8.0)
    guidance_count: int = 2000
    student_distributions: tuple[str, ...] = ("rings", "spirals")
    student_train_steps: int = 1500
    adversarial: AdversarialConfig = AdversarialConfig()


QUICK = ReportSettings(steps=(8, 16, 32), count=32, reference_steps=128, guidance_distributions=("rings",),
                       scales=(1.0, 8.0), guidance_count=300, student_distributions=("rings",), student_train_steps=40,
                       adversarial=AdversarialConfig(steps=20, pairs=256))


def write_report(out: Path, settings: ReportSettings = ReportSettings()) -> list[Path]:
    """convergence.png and README.md (both tables, and how to read them) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    mix = DISTRIBUTIONS[settings.convergence_distribution]()
    rows = convergence_study(mix, steps=settings.steps, count=settings.count, reference_steps=settings.reference_steps)
    plot = out / REPORT_FILES[0]
    plot_convergence(rows, plot, f"{settings.convergence_distribution}, exact denoiser, {CONVERGENCE_SCHEDULE}, "
                     f"{CONVERGENCE_SPACING} spacing; reference: DPM-Solver++(2M), {settings.reference_steps} steps")
    tables, summary = [], []
    for name in settings.guidance_distributions:
        rows_w = guidance_support(DISTRIBUTIONS[name](), scales=settings.scales, count=settings.guidance_count)
        tables.append(guidance_markdown(name, rows_w))
        last = rows_w[-1]
        summary.append(f"- {name}, w = {last.scale:g}: CFG {last.cfg.outside_share:.1%} outside, distance "
                       f"{last.cfg.distance:.3f} ({last.cfg.distance / last.cfg.noise_floor:.1f}x the floor); "
                       f"autoguidance {last.autoguidance.outside_share:.1%} outside, distance "
                       f"{last.autoguidance.distance:.3f} ({last.autoguidance.distance / last.cfg.noise_floor:.1f}x)")
    students = {name: one_step_students(DISTRIBUTIONS[name](), count=settings.guidance_count,
                                        train_steps=settings.student_train_steps, adversarial=settings.adversarial)
                for name in settings.student_distributions}
    readme = out / REPORT_FILES[1]
    readme.write_text(README.format(students="\n\n".join(students_markdown(n, r) for n, r in students.items()),
                                    student_summary=_student_summary(students), train_steps=settings.student_train_steps,
                                    adversarial_steps=settings.adversarial.steps,
                                    adversarial_weight=settings.adversarial.adversarial_weight,
                                    distribution=settings.convergence_distribution, count=settings.count,
                                    reference=settings.reference_steps, convergence=convergence_markdown(rows),
                                    guidance="\n\n".join(tables), summary="\n".join(summary),
                                    samples=settings.guidance_count,
                                    factor=WEAK_FACTOR, slopes=", ".join(f"{r.solver} {r.slope:.2f}" for r in rows)))
    return [plot, readme]


def _student_summary(students: dict[str, list[StudentRow]]) -> str:
    lines = []
    for name, rows in students.items():
        by = {(r.model, r.steps): r.quality for r in rows}
        teacher, reflow = by[("MLP teacher", 30)], by[("reflow student", 1)]
        distilled = by[("adversarially distilled student", 1)]
        lines.append(f"- {name}: one step of the distilled student {distilled.outside_share:.1%} outside, distance "
                     f"{distilled.distance:.3f}; the reflow student's one step {reflow.outside_share:.1%}, "
                     f"{reflow.distance:.3f}; the teacher's 30 Heun steps (59 evaluations) {teacher.outside_share:.1%}, "
                     f"{teacher.distance:.3f}")
    return "\n".join(lines)


README = """# The 2-D lab's exact readings

Written by `python -m diffusion lab2d-report` (issue 29). The models are Gaussian mixtures whose denoiser
E[x0 | x_t, y] and noisy density are closed form (`diffusion/lab2d/exact.py`), run through the library's own
`Denoiser`, samplers and guidance, so every number below is a property of the samplers and guidance methods,
not of a learned network.

## Convergence order

![convergence](convergence.png)

{count} points of the `{distribution}` mixture (class-conditional, unguided), each solved from the same noise
by every deterministic solver; the error is the mean distance of its end points to the reference solution
(DPM-Solver++(2M) with {reference} steps, whose own error is far below the smallest one here). The time grid is
uniform in log-SNR (vp-cosine schedule).

{convergence}

Read: the fitted slopes ({slopes}) are minus the solvers' orders: DDIM and ODE-Euler are the same first-order
method (identical rows), Heun and DPM-Solver++(2M) are second order. On a grid uniform in t the data-prediction
Heun step loses part of its order near t = 0, where the steps in alpha / sigma grow without bound (slopes of
1.2 to 1.6 there); a log-SNR grid keeps the steps even where the ODE changes fastest. `tests/test_lab2d.py`
checks every slope within 0.3 of its order.

## Guidance and the class's support

{samples} samples (classes balanced), vp-cosine, ODE Heun 30 steps, exact model, from the same noise. A sample
of class y is *outside the support* when its exact density log p(x | y) is below the 1 % quantile of log p(x0 | y)
over exact samples of y, so exact samples are outside 1 % of the time. The distance is the sliced Wasserstein-2
to the exact class-conditional distribution; its noise floor is the same distance for exact samples of that size.
Autoguidance's guide is the same mixture with every component's standard deviation times {factor:g}: a
deliberately worse exact model.

{guidance}

Read: w = 1 is the conditional model itself (both columns equal, near the noise floor). At the largest w:

{summary}

Classifier-free guidance pushes each class away from the others. Where the classes interleave (rings, spirals)
samples leave their class's support; where they part (the tree's outer branches) they stay on the branches but
crowd at the tips, so the share outside stays small while the distance grows. Autoguidance at the same w sharpens
each class towards the cores of its own components: no sample leaves the support and the distance grows far
less: Karras et al. 2024's claim, on their kind of example. `tests/test_lab2d_samplers.py` checks it on the rings.

## One step as real as thirty: adversarial distillation

Issue 41 asks for an instant model rewarded for looking real, tried first where the answer is exact. An MLP
teacher is learned from exact samples ({train_steps} Adam steps, flow objective); its reflow student copies the
teacher's ODE endpoints ({train_steps} steps); the adversarially distilled student starts from the reflow student
and trains {adversarial_steps} more steps on the same distillation target plus a discriminator that sees exact
samples of each class (`diffusion/lab2d/adversarial.py`: ADD, Sauer et al. 2023, non-saturating loss with an R1
penalty, adversarial weight {adversarial_weight:g}). Every row starts from the same noise, classes balanced, no
guidance; support and distance are measured as above.

{students}

Read:

{student_summary}

One step of the reflow student lands between the classes' arms where it cannot copy its teacher (the average of
the endpoints it was shown); the discriminator punishes exactly those points, so the distilled student's single
step is about as far from the exact distribution as its teacher's thirty Heun steps. It is trained for one step:
at two steps it is worse than at one (its velocity is no longer a flow's), so it is an instant model, not a faster
sampler of the same ODE. `tests/test_lab2d_adversarial.py` checks the ordering on the rings at a small size.
"""
