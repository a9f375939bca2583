"""`python -m diffusion evaluate`: sample quality per sampler and NFE, and the effect of guidance.

For each configuration, class-balanced samples are scored by the shipped evaluation classifier:
feature FID against the Fashion-MNIST test split (see diffusion.metrics for why it is not Inception
FID), class accuracy (does a sample asked for class k look like class k?) and diversity (mean
pairwise feature distance within a class, averaged over classes). Results go to JSON, a Markdown
table and PNG plots.

A full run takes hours on a CPU, so the JSON is rewritten after every row, and a later run reuses
the rows it already holds when the checkpoint file (by SHA-256) and the sample settings are the
same: an interrupted run resumes, and computing one part keeps the other parts' rows.

Under torchrun the batches of every row are split across the ranks (diffusion.distributed) and scored on rank 0,
which alone reads and writes the files: K processes give the numbers of one, K times sooner.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

from .checkpoint import atomic_write
from .data import load_fashion_mnist, to_model_range
from .distributed import default_device, from_main, is_main, map_sharded, on_main, process_group
from .engine import FlowRequest, ModelCache, RequestError, SampleRequest, run_request
from .sampling import draw_noise, image_generators
from .schedules import time_grid
from .straightness import readout_from_trajectory
from .lens import LENS_ODE, PROBES, probe_images
from .guidance import GUIDANCE_METHODS
from .likelihood import ODELikelihoodConfig, dequantize_each, model_log_likelihood, rademacher_probes
from .outputs import OutputExists
from .metrics import (box_blur, class_accuracy, evaluator_outputs, frechet_distance, mean_pairwise_distance,
                      texture_position, texture_statistics)


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str = "fashion-diffusion"
    checkpoint_dir: str = "checkpoints"
    samples: int = 1000  # per configuration, class-balanced
    reference: int = 10_000  # test images for the reference statistics
    batch_size: int = 50
    seed: int = 0
    out_dir: str = "docs/evaluation"
    quick: bool = False  # a tiny run for CI: few samples, few configurations
    likelihood_images: int = 1000  # the first N test images, for the likelihood part
    likelihood_tolerance: float = 1e-4  # dopri5's rtol = atol (1e-5 costs 2.2x the NFE and moved bits/dim by 0.001)
    progress_dir: str = "runs/likelihood"  # per-batch results of a likelihood row, so a killed run resumes
    probe_images: int = 100  # test images whose out-of-distribution probes are scored (the probes part)
    samplers: tuple[str, ...] = ()  # the samplers part's rows of only these samplers (empty: all of them)

    def scaled(self) -> "EvalConfig":
        if not self.quick:
            return self
        return replace(self, samples=min(self.samples, 20), reference=min(self.reference, 200),
                       likelihood_images=min(self.likelihood_images, 4), likelihood_tolerance=1e-2,
                       probe_images=min(self.probe_images, 2))


def sampler_grid(quick: bool) -> list[dict]:
    """The sampler table: DDPM 1000/250/100, DDIM 10/20/50/100, ODE (Euler, Heun, DPM++2M) at ~10/20/50 NFE."""
    if quick:
        return [dict(sampler="ddpm", steps=4), dict(sampler="ddim", steps=4), dict(sampler="ode", solver="heun", steps=3)]
    rows = [dict(sampler="ddpm", steps=s) for s in (1000, 250, 100)]
    rows += [dict(sampler="ddim", steps=s) for s in (10, 20, 50, 100)]
    rows += [dict(sampler="ode", solver="euler", steps=s) for s in (10, 20, 50)]
    for spacing in ("log-snr", "uniform"):  # the 2nd-order solvers on both time spacings
        rows += [dict(sampler="ode", solver="heun", steps=s, spacing=spacing) for s in (5, 10, 25)]  # NFE 9, 19, 49
        rows += [dict(sampler="ode", solver="dpm++2m", steps=s, spacing=spacing) for s in (10, 20, 50)]
    # the score-SDE samplers (issue 17); Euler-Maruyama needs log-SNR steps below 2, hence that spacing
    rows += [dict(sampler="sde", stochasticity=1.0, steps=s, spacing="log-snr") for s in (50, 100, 250)]
    rows += [dict(sampler="pc", predictor="ddpm", correctors=1, snr=0.16, steps=s) for s in (25, 50)]  # NFE 49, 99
    rows += [dict(sampler="langevin", langevin_steps=2, step_size=1.0, steps=s, spacing="log-snr") for s in (25, 50)]
    return rows


NOISE_INDEXING = "one image index per sample"  # part of a run's identity: rows sampled otherwise are not reused
METRICS = ("nfe", "samples", "fid", "texture_fid", "accuracy", "diversity", "seconds",
           "bits_per_dim", "stderr", "median", "p05", "p95", "nfe_max", "by_probe",
           "straightness", "straightness_std", "flow_time", "deviation")
PARTS = ("samplers", "guidance", "quality_bar", "seed_spread", "temperatures", "likelihood", "probes", "texture",
         "guidance_methods", "few_step", "straightness")
# The parts that make sense for each kind of generative checkpoint, the first ones being the default.
KIND_PARTS = {"denoiser": (("samplers", "guidance"), ("quality_bar", "seed_spread", "likelihood", "probes", "texture",
                                                     "guidance_methods", "few_step", "straightness")),
              "normalizing-flow": (("temperatures", "quality_bar"), ("likelihood", "probes", "texture"))}
NOISY_REFERENCE_SIGMA = 0.1  # the noisy reference: real images plus N(0, 0.1^2) per pixel (in [-1, 1] units)
TEMPERATURES = (0.5, 0.7, 0.85, 1.0)
SPREAD_SEEDS = 5  # seed-spread: DDIM-20 with this many other seeds, for the noise of one row's numbers


def row_key(row: dict) -> str:
    """A row's identity: its request fields (everything but the metrics)."""
    return json.dumps({k: v for k, v in row.items() if k not in METRICS}, sort_keys=True)


def earlier_run(path: Path, identity: dict) -> dict:
    """The JSON of an earlier run at `path` if its checkpoint and sample settings equal `identity`, else {}."""
    if not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return earlier if isinstance(earlier, dict) and earlier.get("identity") == identity else {}


def reusable_rows(earlier: dict) -> dict[str, dict]:
    """The rows of an earlier run's JSON (earlier_run), by row_key."""
    parts = [earlier.get(part) for part in PARTS]
    rows = [r for part in parts for r in ([part] if isinstance(part, dict) else part or []) if isinstance(r, dict)]
    return {row_key(r): r for r in rows}


def texture_rows(config: EvalConfig, kind: str, self_condition: bool) -> list[dict]:
    """The texture part: the settings issue 12 judges sharpness at (DPM-Solver++(2M)-20 without guidance) and the
    quality bar's (DDIM-50, CFG 3); a flow at T = 1."""
    if kind == "normalizing-flow":
        return [dict(measure="texture", temperature=1.0)]
    steps = (4, 4) if config.quick else (20, 50)
    return [dict(measure="texture", sampler="ode", solver="dpm++2m", steps=steps[0], guidance="none",
                 self_condition=self_condition),
            dict(measure="texture", sampler="ddim", steps=steps[1], guidance="cfg", scale=3.0, self_condition=self_condition)]


METHOD_SCALES = (2.0, 4.0, 7.0)  # at 1 every CFG variant is the conditional model


def guidance_method_rows(config: EvalConfig, available: set[str]) -> list[dict]:
    """The guidance-methods part: every method of guidance.GUIDANCE_METHODS the checkpoint allows, on one scale
    grid, DDIM-50 (self-conditioning off, as the guidance table), the same noise for every point."""
    scales = (3.0,) if config.quick else METHOD_SCALES
    steps = 4 if config.quick else 50
    return [dict(measure="guidance-methods", method=name, sampler="ddim", steps=steps, **method.settings, scale=s)
            for name, method in GUIDANCE_METHODS.items() if name in available for s in scales]
    # classifier guidance is left to the guidance table: it needs scales near 8 to do anything


FEW_STEPS = (1, 2, 4, 8)
TEACHER_SCALE = 2.0  # the classifier-free guidance fashion-reflow's pairs were made with (`pairs --scale`)
STRAIGHTNESS_STEPS = 50  # DDIM (Euler in flow coordinates) steps along which a path's straightness is read


def few_step_setting(model) -> dict:
    """How a model is run in the few-step and straightness parts: a reflow student as it is (its pairs carry the
    teacher's guidance), every other model with the guidance the student's pairs were made with, so the two
    integrate the same map."""
    reflow = model.config.get("reflow")
    if isinstance(reflow, dict):
        return dict(guidance="none", scale=1.0)
    return dict(guidance="cfg", scale=TEACHER_SCALE) if model.config.get("null_class") is not None else dict(guidance="none")


def few_step_rows(config: EvalConfig, model) -> list[dict]:
    """Issue 15's steps-vs-FID curve: the probability-flow ODE with 1, 2, 4, 8 Euler steps, and DPM-Solver++(2M)-20
    as the converged reference, at the model's few-step setting (self-conditioning as the model was trained)."""
    setting = few_step_setting(model) | dict(self_condition=model.self_condition)
    steps = (1, 2) if config.quick else FEW_STEPS
    return ([dict(measure="few-step", sampler="ode", solver="euler", steps=n, **setting) for n in steps]
            + [dict(measure="few-step", sampler="ode", solver="dpm++2m", steps=3 if config.quick else 20, **setting)])


def straightness_rows(config: EvalConfig, model) -> list[dict]:
    """Straightness (Liu et al. 2022) along DDIM paths at the few-step setting, and without guidance."""
    settings = [few_step_setting(model)]
    if settings[0]["guidance"] != "none":
        settings.append(dict(guidance="none", scale=1.0))
    return [dict(measure="straightness", sampler="ddim", steps=4 if config.quick else STRAIGHTNESS_STEPS,
                 self_condition=model.self_condition, **setting) for setting in settings]


def likelihood_rows(config: EvalConfig, kind: str) -> list[dict]:
    """Conditioned on the true label, and not (a denoiser's null class; a flow's mixture over classes)."""
    if kind == "normalizing-flow":
        solver = {"method": "exact"}
    else:
        solver = {"method": "pf-ode dopri5", "tolerance": config.likelihood_tolerance,
                  "t_start": ODELikelihoodConfig().t_start, "divergence": "hutchinson"}
    return [dict(likelihood=condition, images=config.likelihood_images, **solver)
            for condition in ("conditional", "unconditional")]


def _read_progress(path: Path) -> dict:
    try:
        progress = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return progress if isinstance(progress, dict) else {}


def guidance_grid(quick: bool, has_classifier: bool) -> list[dict]:
    scales = (0.0, 3.0) if quick else (0.0, 1.0, 2.0, 3.0, 5.0, 8.0)
    modes = ["cfg"] + (["classifier"] if has_classifier else [])
    return [dict(guidance=mode, scale=s) for mode in modes for s in scales]


def check_evaluator_fits(model, evaluator, name: str):
    """Our evaluator scores Fashion-MNIST images of its own shape and classes; anything else is refused (an
    imported colour model's 'FID' in a grey garment classifier's feature space would mean nothing)."""
    want = (evaluator.config["image_channels"], evaluator.config["image_size"], len(evaluator.class_names))
    have = (model.config["image_channels"], model.config["image_size"], len(model.class_names))
    if have != want:
        raise RequestError(f"checkpoint {name!r} makes {have[0]}-channel {have[1]} px images of {have[2]} classes; the "
                           f"evaluator ({want[0]}-channel {want[1]} px Fashion-MNIST, {want[2]} classes) does not apply, "
                           f"so accuracy, FID and likelihood on the test set cannot be measured for it")


class Evaluator:
    def __init__(self, config: EvalConfig, cache: ModelCache | None = None):
        self.config = c = config.scaled()
        self.cache = cache or ModelCache(c.checkpoint_dir, device=default_device())  # under torchrun: this rank's GPU
        evaluator = self.cache.first_of_kind("evaluator")
        if evaluator is None:
            raise RequestError(f"no evaluator checkpoint in {c.checkpoint_dir}; train one with "
                               f"`python -m diffusion train --preset fashion-evaluator`")
        self.evaluator = evaluator.network
        self.model = model = self.cache.get(c.checkpoint)  # loaded once: every row samples the same bytes
        self.kind = model.kind
        if self.kind not in KIND_PARTS:
            raise RequestError(f"checkpoint {c.checkpoint!r} has kind {self.kind!r}; only generative checkpoints "
                               f"({', '.join(KIND_PARTS)}) can be evaluated")
        check_evaluator_fits(model, evaluator, c.checkpoint)
        self.classes = len(model.class_names)

    @cached_property
    def test_set(self):
        """The Fashion-MNIST test split, read once per Evaluator (reference features and every likelihood row)."""
        return load_fashion_mnist("test")

    @cached_property
    def reference_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test images' penultimate features and texture statistics (computed where rows are scored)."""
        images = to_model_range(self.test_set.images[: self.config.reference])
        return evaluator_outputs(self.evaluator, images)[1], texture_statistics(self.evaluator, images)

    def available_methods(self) -> set[str]:
        """The guidance methods this part compares: CFG and its variants with a null class, autoguidance with a -weak
        sibling (classifier guidance has its rows in the guidance table)."""
        methods = set()
        if self.model.config.get("null_class") is not None:
            methods |= {n for n, m in GUIDANCE_METHODS.items() if m.settings["guidance"] == "cfg"}
        if f"{self.config.checkpoint}-weak" in self.cache.names("denoiser"):
            methods.add("autoguidance")
        return methods

    def score(self, **request_fields) -> dict:
        """Sample config.samples images (equal share per class) with one request setting and score them.

        A "seed" field, if given, replaces config.seed (the seed-spread rows). The batches are split across ranks;
        rank 0 scores them all and returns the row, the other ranks None."""
        c = self.config
        row = dict(request_fields)
        seed = request_fields.pop("seed", c.seed)
        request_fields.pop("measure", None)  # marks a row of the texture or methods part (it has its own key)
        request_fields.pop("method", None)  # a guidance method's name; its settings are the row's request fields
        per_class = max(1, c.samples // self.classes)
        requests = []
        for label in range(self.classes):
            for start in range(0, per_class, c.batch_size):
                # Every sample has its own noise (image index label * per_class + start + i): with the same noise
                # for every class, unconditional rows would repeat per_class images `classes` times.
                common = dict(checkpoint=c.checkpoint, class_index=label, seed=seed,
                              first_index=label * per_class + start, batch_size=min(c.batch_size, per_class - start))
                if self.kind == "normalizing-flow":
                    requests.append(FlowRequest(**common, **request_fields))
                else:
                    requests.append(SampleRequest(**common, **({"guidance": "none", "scale": 1.0} | request_fields)))
        results = map_sharded(lambda request: run_request(self.cache, request, model=self.model), requests)
        if results is None:
            return None
        images = torch.cat([r.images for r in results])
        labels = torch.tensor([r.request.class_index for r in results for _ in range(len(r.images))])
        return {**row, "nfe": results[-1].nfe, **self.metrics(images, labels),
                "seconds": round(sum(r.seconds for r in results), 1)}

    def straightness(self, **row) -> dict:
        """Straightness of config.samples class-balanced paths (the score() rows' noise), each read along its own
        DDIM run (straightness.readout_from_trajectory): mean and spread over images, and the mean rms distance of
        the velocity from z - x at every step (the curve plotted against flow time). Rank 0 returns the row, the
        other ranks None."""
        c = self.config
        fields = {k: v for k, v in row.items() if k != "measure"}
        per_class = max(1, c.samples // self.classes)
        schedule = self.model.schedule
        requests = [SampleRequest(checkpoint=c.checkpoint, class_index=label, seed=c.seed,
                                  first_index=label * per_class + start, batch_size=min(c.batch_size, per_class - start),
                                  **fields)
                    for label in range(self.classes) for start in range(0, per_class, c.batch_size)]

        def readout(request):
            result = run_request(self.cache, request, model=self.model, record_trajectory=True)
            x_T = draw_noise(image_generators(c.seed, request.batch_size, request.first_index), result.images.shape[1:])
            return readout_from_trajectory(schedule, time_grid(schedule, request.steps), x_T, result.trajectory)

        readouts = map_sharded(readout, requests)
        if readouts is None:
            return None
        per_image = torch.cat([r.per_image for r in readouts]).double()
        deviation = torch.cat([r.deviation for r in readouts], dim=1).double()
        flow_time = readouts[-1].s[:-1]
        return {**row, "samples": len(per_image), "straightness": float(per_image.mean()),
                "straightness_std": float(per_image.std()), "flow_time": [round(float(v), 5) for v in flow_time],
                "deviation": [round(float(v), 5) for v in deviation.mean(1)]}

    def likelihood(self, **row) -> dict:
        """bits/dim of the first `images` test images (uniformly dequantized, noise and Hutchinson probe from image
        i's own generator), conditioned on the true label or not."""
        c = self.config
        test = self.test_set
        ode = ODELikelihoodConfig(rtol=row["tolerance"], atol=row["tolerance"], t_start=row["t_start"]) \
            if self.kind == "denoiser" else ODELikelihoodConfig()

        def batch(start, end):
            generators = image_generators(c.seed, end - start, first_index=start)
            x = dequantize_each(test.images[start:end], generators)
            labels = test.labels[start:end] if row["likelihood"] == "conditional" else None
            return x, rademacher_probes(generators, x.shape[1:]), labels

        measured = self._resumable_bits(row, min(row["images"], len(test)), c.batch_size, batch, ode)
        if measured is None:
            return None
        bits, nfes, seconds = measured
        return {**row, "bits_per_dim": float(bits.mean()), "stderr": float(bits.std() / len(bits) ** 0.5),
                "median": float(bits.median()), "p05": float(bits.quantile(0.05)), "p95": float(bits.quantile(0.95)),
                "nfe": round(sum(nfes) / len(nfes)), "nfe_max": max(nfes), "seconds": seconds}

    def probes(self, **row) -> dict:
        """The out-of-distribution probes (diffusion.lens) of the first `images` test images, unconditional: mean
        bits/dim per probe, and how often a probe is rated likelier than its own original."""
        c = self.config
        test = self.test_set
        ode = ODELikelihoodConfig(rtol=row["tolerance"], atol=row["tolerance"]) if self.kind == "denoiser" \
            else ODELikelihoodConfig()

        def batch(start, end):  # images start..end, each with its probes: image i's noise probe drawn from seed + i
            pixels = torch.cat([probe_images(test.images[i], c.seed + i) for i in range(start, end)])
            generators = image_generators(c.seed, len(pixels), first_index=start * len(PROBES))
            x = dequantize_each(pixels, generators)
            return x, rademacher_probes(generators, x.shape[1:]), None

        count = min(row["images"], len(test))
        step = max(1, c.batch_size // len(PROBES))
        measured = self._resumable_bits(row, count, step, batch, ode)
        if measured is None:
            return None
        bits, nfes, seconds = measured
        bits = bits.view(count, len(PROBES))
        by_probe = {probe: {"bits_per_dim": float(bits[:, p].mean()), "stderr": float(bits[:, p].std() / count ** 0.5),
                            "likelier_than_original": float((bits[:, p] < bits[:, 0]).double().mean())}
                    for p, probe in enumerate(PROBES)}
        return {**row, "by_probe": by_probe, "nfe": round(sum(nfes) / len(nfes)), "nfe_max": max(nfes),
                "seconds": seconds}

    def _resumable_bits(self, row: dict, count: int, step: int, batch, ode: ODELikelihoodConfig):
        """bits/dim for items 0..count in batches of `step` (batch(start, end) -> x, Hutchinson probes, labels),
        unconditional when labels is None. The missing batches go to the ranks one round of K batches at a time; rank 0
        saves each round's batches under progress_dir, so an interrupted row resumes. Returns (bits, NFE per batch,
        seconds) on rank 0, None on the other ranks."""
        c = self.config
        run_id = hashlib.sha256(f"{self.model.sha256} {row_key(row)} {c.seed} {c.batch_size}".encode()).hexdigest()[:16]
        progress_path = Path(c.progress_dir) / f"{c.checkpoint}-{run_id}.json"
        progress = on_main(lambda: _read_progress(progress_path))
        device = self.cache.device

        def measure(start: int) -> dict:
            x, probes, labels = batch(start, min(start + step, count))
            began = time.perf_counter()
            with torch.inference_mode():
                result = model_log_likelihood(self.model, x.to(device), None if labels is None else labels.to(device),
                                              probes.to(device), ode)
            return {"bits": result.bits_per_dim.cpu().tolist(), "nfe": result.nfe, "seconds": time.perf_counter() - began}

        missing = [start for start in range(0, count, step) if str(start) not in progress]
        world = process_group()[1]
        for first in range(0, len(missing), world):
            starts = missing[first:first + world]
            measured = map_sharded(measure, starts)
            if measured is None:
                continue
            progress |= {str(start): entry for start, entry in zip(starts, measured)}
            progress_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(progress_path, lambda tmp: Path(tmp).write_text(json.dumps(progress)))
        if not is_main():
            return None
        bits = torch.tensor([b for start in sorted(progress, key=int) for b in progress[start]["bits"]], dtype=torch.float64)
        nfes = [entry["nfe"] for entry in progress.values()]
        return bits, nfes, round(sum(entry["seconds"] for entry in progress.values()), 1)

    def metrics(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        probs, features = evaluator_outputs(self.evaluator, images)
        reference, reference_texture = self.reference_features
        diversity = sum(mean_pairwise_distance(features[labels == k]) for k in range(self.classes)) / self.classes
        return {"samples": len(labels), "fid": frechet_distance(features, reference),
                "texture_fid": frechet_distance(texture_statistics(self.evaluator, images), reference_texture),
                "accuracy": class_accuracy(probs, labels), "diversity": diversity}

    def real_data_floor(self, draws: int = 5) -> dict:
        """The metrics of as many real training images (class-balanced) as a row has samples, over several draws.

        This is what a perfect sampler would score: feature FID of a finite sample is biased upwards and noisy,
        so differences between rows smaller than this spread say nothing. The first draw also gives the two texture
        references: the same images blurred by a 3x3 box, and with Gaussian noise of NOISY_REFERENCE_SIGMA added.
        """
        c = self.config
        train = load_fashion_mnist("train")
        per_class = max(1, c.samples // self.classes)
        generator = torch.Generator().manual_seed(c.seed)
        rows, references = [], {}
        for draw in range(draws):
            chosen = []
            for k in range(self.classes):
                members = (train.labels == k).nonzero()[:, 0]
                chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
            chosen = torch.cat(chosen)
            images, labels = to_model_range(train.images[chosen]), train.labels[chosen]
            rows.append(self.metrics(images, labels))
            if draw == 0:
                noise = torch.randn(images.shape, generator=generator)
                references = {"blurred": self.metrics(box_blur(images), labels),
                              "noisy": self.metrics((images + NOISY_REFERENCE_SIGMA * noise).clamp(-1, 1), labels)}
        fids = torch.tensor([r["fid"] for r in rows], dtype=torch.float64)
        textures = torch.tensor([r["texture_fid"] for r in rows], dtype=torch.float64)
        return {"draws": draws, "samples": rows[0]["samples"], "fid": float(fids.mean()), "fid_std": float(fids.std()),
                "texture_fid": float(textures.mean()), "texture_fid_std": float(textures.std()),
                "accuracy": sum(r["accuracy"] for r in rows) / draws, "diversity": sum(r["diversity"] for r in rows) / draws,
                **references}

    def run(self, parts=None, self_conditioning=(False, True), write=True, overwrite=False) -> dict:
        """parts (None: the kind's default): for a denoiser "samplers" (the NFE table), "guidance" (the scale
        table), "quality-bar" (DDIM-50, CFG 3), "seed-spread" (DDIM-20 with SPREAD_SEEDS other seeds: how much
        one row's numbers move with the noise); for a normalizing flow "temperatures" and "quality-bar" (T = 1).

        Results go to out_dir/CHECKPOINT.json as rows finish; a file there from the same checkpoint and settings is
        continued, one from another file or other settings is replaced only if `overwrite`. Under torchrun every
        rank returns the same results; rank 0 alone reads and writes the files."""
        c = self.config
        default, optional = KIND_PARTS[self.kind]
        wanted = {part.replace("-", "_") for part in (parts or default)}
        if wanted - set(default + optional):
            raise RequestError(f"checkpoint {c.checkpoint!r} is a {self.kind}: its evaluation parts are "
                               f"{', '.join(p.replace('_', '-') for p in default + optional)}, not "
                               f"{', '.join(sorted(p.replace('_', '-') for p in wanted - set(default + optional)))}")
        model = self.model
        conditioning = [s for s in self_conditioning if not s or (model.kind == "denoiser" and model.self_condition)]
        identity = {"checkpoint_sha256": model.sha256, "samples": c.samples,
                    "reference": c.reference, "seed": c.seed, "noise": NOISE_INDEXING}
        path = Path(c.out_dir) / f"{c.checkpoint}.json"
        exists, earlier = on_main(lambda: (path.exists(), earlier_run(path, identity))) if write else (False, {})
        if exists and not overwrite and not earlier:
            raise OutputExists(f"{path} holds an evaluation of another file or with other settings (samples, "
                               f"reference, seed); pass --overwrite to replace it, or choose another --out-dir")
        done = reusable_rows(earlier)
        writes = write and is_main()
        started = time.time()
        results = {"config": asdict(c), "identity": identity, "checkpoint": c.checkpoint,
                   "device": str(self.cache.device), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                   "real_data": on_main(self.real_data_floor), "samplers": [], "guidance": [], "temperatures": [],
                   "likelihood": []}
        steps = 4 if c.quick else 50
        planned = {} if self.kind == "normalizing-flow" else {
            "samplers": [dict(**row, self_condition=s) for s in conditioning for row in sampler_grid(c.quick)
                         if not c.samplers or row["sampler"] in c.samplers],
            "guidance": [dict(sampler="ddim", steps=steps, **row)
                         for row in guidance_grid(c.quick, bool(self.cache.names("noisy-classifier")))],
            "quality_bar": [dict(sampler="ddim", steps=steps, guidance="cfg", scale=3.0,
                                 self_condition=model.self_condition)],
            "seed_spread": [dict(sampler="ddim", steps=4 if c.quick else 20, self_condition=model.self_condition,
                                 seed=c.seed + k) for k in range(1, 3 if c.quick else SPREAD_SEEDS + 1)]}
        if self.kind == "normalizing-flow":
            planned = {"temperatures": [dict(temperature=t) for t in (TEMPERATURES[1:] if c.quick else TEMPERATURES)],
                       "quality_bar": [dict(temperature=1.0)]}
        planned["likelihood"] = likelihood_rows(c, self.kind)
        planned["texture"] = texture_rows(c, self.kind, model.kind == "denoiser" and model.self_condition)
        if self.kind == "denoiser":
            planned["guidance_methods"] = guidance_method_rows(c, self.available_methods())
            planned["few_step"] = few_step_rows(c, model)
            planned["straightness"] = straightness_rows(c, model)
        planned["probes"] = [dict(probes="unconditional", images=c.probe_images,
                                  **({"tolerance": LENS_ODE.rtol} if self.kind == "denoiser" else {"method": "exact"}))]

        def known(part):  # the rows of a part that are done, in table order (the quality bar is one row)
            rows = [done[row_key(r)] for r in planned[part] if row_key(r) in done]
            return rows if part not in ("quality_bar", "probes") else (rows[0] if rows else None)

        def known_or_kept(part):  # a part not computed now keeps the earlier run's rows as they are (other settings)
            return earlier[part] if part not in wanted and earlier.get(part) else known(part)

        for part in planned:  # the JSON holds every known row from its first write on
            results[part] = known_or_kept(part)
        for part in [p for p in planned if p in wanted]:
            for row in planned[part]:
                if row_key(row) not in done:
                    measure = {"likelihood": self.likelihood, "probes": self.probes,
                               "straightness": self.straightness}.get(part, self.score)
                    done[row_key(row)] = from_main(measure(**row))  # scored on rank 0
                    results[part] = known(part)
                    if writes:
                        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
        for part in planned:  # rows shared between parts (a flow's quality bar is its T = 1 row) are known now
            results[part] = known_or_kept(part)
        for part in ("quality_bar", "probes"):
            if results[part] is None:
                del results[part]
        results["wall_minutes"] = round((time.time() - started) / 60, 1)
        if writes:
            write_report(results, Path(c.out_dir))
        return results


def _position(row: dict, real: dict | None) -> str:
    """A row's texture position between the real-data floor and the blurred reference, or "-"."""
    if not real or "blurred" not in real or "texture_fid" not in row:
        return "-"
    return f"{texture_position(row['texture_fid'], real['texture_fid'], real['blurred']['texture_fid']):.2f}"


def markdown_tables(results: dict) -> str:
    lines = [f"### {results['checkpoint']} ({results['config']['samples']} samples per row, "
             f"{results['config']['reference']} test images as reference, {results['device']}, torch {results['torch']}, "
             f"{results['date']})"]
    if "real_data" in results:
        r = results["real_data"]
        lines += ["", f"Real training images, {r['samples']} per draw (class-balanced), {r['draws']} draws: feature FID "
                      f"{r['fid']:.2f} ± {r['fid_std']:.2f}, accuracy {r['accuracy']:.3f}, diversity {r['diversity']:.3f}. "
                      f"This is the score of a perfect sampler at this sample count: FID differences within about "
                      f"twice that spread are noise."]
    if "real_data" in results and "blurred" in results["real_data"]:
        r = results["real_data"]
        b, n = r["blurred"], r["noisy"]
        lines += ["", f"References for texture (texture FID: Frechet distance of per-image texture statistics, "
                      f"diffusion.metrics; texture position: 0 = real, 1 = blurred, on a log scale): real images "
                      f"{r['texture_fid']:.4f} ± {r['texture_fid_std']:.4f}; the same images blurred by a 3x3 box: "
                      f"texture FID {b['texture_fid']:.4f} (feature FID {b['fid']:.2f}, accuracy {b['accuracy']:.3f}); "
                      f"with Gaussian noise of sigma {NOISY_REFERENCE_SIGMA:g}: texture FID {n['texture_fid']:.4f}, "
                      f"position {_position(n, r)} (feature FID {n['fid']:.2f})."]
    if results.get("texture"):
        lines += ["", "Texture (sharpness) at the settings that matter most:", "",
                  "| setting | NFE | texture FID | texture position | feature FID | accuracy | diversity |",
                  "|---|---|---|---|---|---|---|"]
        for r in results["texture"]:
            if "temperature" in r:
                setting = f"temperature {r['temperature']:g}"
            else:
                guidance = "no guidance" if r["guidance"] == "none" else f"{r['guidance']} {r['scale']:g}"
                solver = "-" + r["solver"] if r["sampler"] == "ode" else ""
                setting = f"{r['sampler']}{solver}-{r['steps']}, {guidance}"
            lines.append(f"| {setting} | {r['nfe']} | {r['texture_fid']:.4f} | {_position(r, results.get('real_data'))} | "
                         f"{r['fid']:.2f} | {r['accuracy']:.3f} | {r['diversity']:.3f} |")
    if results["samplers"]:
        lines += ["", "Samplers (the class-conditional model without guidance; every row starts from the same noise):", "",
                  "| sampler | solver | spacing | steps | NFE | self-cond | feature FID | accuracy | diversity |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results["samplers"]:
            lines.append(f"| {r['sampler']} | {r.get('solver', '') if r['sampler'] == 'ode' else ''} | "
                         f"{r.get('spacing', 'uniform')} | {r['steps']} | {r['nfe']} | "
                         f"{'on' if r['self_condition'] else 'off'} | {r['fid']:.2f} | {r['accuracy']:.3f} | "
                         f"{r['diversity']:.3f} |")
    if results["guidance"]:
        lines += scale_table(results["guidance"], "mode", "guidance",
                             "Guidance (DDIM, self-conditioning off; scale 0 is the unconditional model, "
                             "classifier-free scale 1 the conditional one):")
    if results.get("guidance_methods"):
        lines += scale_table(results["guidance_methods"], "method", "method",
                             "Guidance methods (DDIM-50, self-conditioning off, the same noise for every point; each "
                             "method at its paper's suggested setting, guidance.GUIDANCE_METHODS):")
    if results.get("few_step"):
        lines += ["", "Few steps (probability-flow ODE, the same noise for every row; issue 15's steps-vs-FID curve):",
                  "", "| solver | steps | NFE | guidance | feature FID | accuracy | diversity | texture position |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["few_step"]:
            guidance = "none" if r["guidance"] == "none" else f"{r['guidance']} {r['scale']:g}"
            lines.append(f"| {r['solver']} | {r['steps']} | {r['nfe']} | {guidance} | {r['fid']:.2f} | "
                         f"{r['accuracy']:.3f} | {r['diversity']:.3f} | {_position(r, results.get('real_data'))} |")
    if results.get("straightness"):
        lines += ["", "Straightness S (Liu et al. 2022, per pixel, 0 = straight paths; read along DDIM paths in "
                      "flow-equivalent coordinates, diffusion.straightness):", "",
                  "| guidance | steps | paths | S (mean) | S (std over paths) |", "|---|---|---|---|---|"]
        for r in results["straightness"]:
            guidance = "none" if r["guidance"] == "none" else f"{r['guidance']} {r['scale']:g}"
            lines.append(f"| {guidance} | {r['steps']} | {r['samples']} | {r['straightness']:.4f} | "
                         f"{r['straightness_std']:.4f} |")
    if results.get("seed_spread"):
        rows = results["seed_spread"]
        fids = torch.tensor([r["fid"] for r in rows], dtype=torch.float64)
        accuracies = torch.tensor([r["accuracy"] for r in rows], dtype=torch.float64)
        lines += ["", f"Seed spread: DDIM-{rows[0]['steps']} (self-conditioning {'on' if rows[0]['self_condition'] else 'off'}) "
                      f"with {len(rows)} other seeds: feature FID {float(fids.mean()):.2f} ± {float(fids.std()):.2f} "
                      f"(min {float(fids.min()):.2f}, max {float(fids.max()):.2f}), accuracy {float(accuracies.mean()):.3f} "
                      f"± {float(accuracies.std()):.3f}. One row's numbers move this much with the noise alone; rows "
                      f"of deterministic samplers share their noise, so their differences are less noisy than that."]
    if results.get("temperatures"):
        lines += ["", "Temperature (z ~ N(0, T^2 I), one exact pass per image; T = 1 is the model's own distribution):",
                  "", "| temperature | feature FID | accuracy | diversity |", "|---|---|---|---|"]
        for r in results["temperatures"]:
            lines.append(f"| {r['temperature']:g} | {r['fid']:.2f} | {r['accuracy']:.3f} | {r['diversity']:.3f} |")
    if "quality_bar" in results and "temperature" in results["quality_bar"]:
        q = results["quality_bar"]
        lines += ["", f"Quality bar (temperature {q['temperature']:g}, {q['samples']} samples): evaluator accuracy "
                      f"{q['accuracy']:.3f}, feature FID {q['fid']:.2f}, diversity {q['diversity']:.3f}."]
    elif "quality_bar" in results:
        q = results["quality_bar"]
        lines += ["", f"Quality bar (DDIM-50, classifier-free guidance 3, self-conditioning "
                      f"{'on' if q['self_condition'] else 'off'}, {q['samples']} samples): evaluator accuracy "
                      f"{q['accuracy']:.3f}, feature FID {q['fid']:.2f}, diversity {q['diversity']:.3f}."]
    if results.get("likelihood"):
        rows = results["likelihood"]
        lines += ["", f"Likelihood of the first {rows[0]['images']} test images, uniformly dequantized (bits/dim: lower is "
                      f"better; ± is the standard error over images; 5-95 % is the spread of single images):", "",
                  "| condition | method | bits/dim | ± | median | 5-95 % | NFE per batch (mean / max) | minutes |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            method = r["method"] + (f", rtol = atol = {r['tolerance']:g}, from t = {r['t_start']:g}"
                                    if "tolerance" in r else "")
            nfe = f"{r['nfe']} / {r['nfe_max']}" if r["nfe_max"] else "one exact pass"
            lines.append(f"| {r['likelihood']} | {method} | {r['bits_per_dim']:.3f} | {r['stderr']:.3f} | "
                         f"{r['median']:.3f} | {r['p05']:.2f}-{r['p95']:.2f} | {nfe} | {r['seconds'] / 60:.1f} |")
    if results.get("probes"):
        r = results["probes"]
        how = "exact" if r.get("method") == "exact" else f"probability-flow ODE, rtol = atol = {r['tolerance']:g}"
        lines += ["", f"Out-of-distribution probes of the first {r['images']} test images, scored unconditionally ({how}; "
                      f"Nalisnick et al. 2019 ask whether such inputs are rated *likelier* than real data):", "",
                  "| probe | bits/dim | ± | rated likelier than its original |", "|---|---|---|---|"]
        for probe, p in r["by_probe"].items():
            share = "" if probe == PROBES[0] else f"{100 * p['likelier_than_original']:.0f} %"
            lines.append(f"| {probe} | {p['bits_per_dim']:.2f} | {p['stderr']:.2f} | {share} |")
    return "\n".join(lines) + "\n"


def scale_table(rows: list[dict], header: str, key: str, caption: str) -> list[str]:
    """Markdown lines of a table of rows by (row[key], scale): feature FID, accuracy, diversity."""
    lines = ["", caption, "", f"| {header} | scale | feature FID | accuracy | diversity |", "|---|---|---|---|---|"]
    return lines + [f"| {r[key]} | {r['scale']:g} | {r['fid']:.2f} | {r['accuracy']:.3f} | {r['diversity']:.3f} |"
                    for r in rows]


def recorded_likelihood(model, out_dir: Path) -> list[dict]:
    """The likelihood rows that `evaluate` wrote for exactly this checkpoint file (by SHA-256), if any."""
    path = Path(out_dir) / f"{model.path.stem}.json" if model.path else None
    try:
        results = json.loads(path.read_text()) if path else {}
    except (OSError, json.JSONDecodeError):
        return []
    if not isinstance(results, dict) or results.get("identity", {}).get("checkpoint_sha256") != model.sha256:
        return []
    rows = results.get("likelihood")

    def well_formed(row) -> bool:  # the file is data: only rows with the fields and types we wrote are shown
        return (isinstance(row, dict) and row.get("likelihood") in ("conditional", "unconditional")
                and row.get("method") in ("exact", "pf-ode dopri5") and type(row.get("images")) is int
                and all(type(row.get(key)) in (int, float) for key in ("bits_per_dim", "stderr")))

    return [r for r in rows if well_formed(r)] if isinstance(rows, list) else []


def likelihood_summary(rows: list[dict]) -> str:
    """'3.29 ± 0.03 bits/dim given the class, 3.31 ± 0.03 without (first 1000 test images, PF-ODE)', or ''."""
    by_condition = {r.get("likelihood"): r for r in rows}
    parts = [f"{by_condition[c]['bits_per_dim']:.2f} ± {by_condition[c]['stderr']:.2f} bits/dim {words}"
             for c, words in (("conditional", "given the class"), ("unconditional", "without it"))
             if c in by_condition]
    if not parts:
        return ""
    first = next(iter(by_condition.values()))
    method = "exact" if first.get("method") == "exact" else "probability-flow ODE"
    return f"{', '.join(parts)} ({method}, first {first.get('images')} test images)"


def write_report(results: dict, out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    name = results["checkpoint"]
    atomic_write(out_dir / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    (out_dir / f"{name}.md").write_text(markdown_tables(results))
    plot_results(results, out_dir)


def plot_results(results: dict, out_dir: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = results["checkpoint"]
    if results["samplers"]:
        plot_fid_against_nfe(results, out_dir / f"{name}-fid-vs-nfe.png", plt)
    if results["guidance"]:
        plot_guidance(results, out_dir / f"{name}-guidance.png", plt)
    if results.get("temperatures"):
        plot_temperatures(results, out_dir / f"{name}-temperature.png", plt)
    if results.get("guidance_methods"):
        plot_guidance_methods(results, out_dir / f"{name}-guidance-methods.png", plt)


def plot_guidance_methods(results: dict, path: Path, plt):
    """Accuracy and feature FID against scale, and FID against accuracy (the trade-off), one line per method."""
    rows = results["guidance_methods"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((r["scale"], r["accuracy"], r["fid"]) for r in rows if r["method"] == method)
        label = GUIDANCE_METHODS[method].label if method in GUIDANCE_METHODS else method
        axes[0].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        axes[1].plot([p[0] for p in points], [p[2] for p in points], marker="o", label=label)
        axes[2].plot([p[1] for p in points], [p[2] for p in points], marker="o", label=label)
    real = results.get("real_data")
    if real:
        for ax, key in ((axes[0], "accuracy"), (axes[1], "fid"), (axes[2], "fid")):
            ax.axhline(real[key], color="0.5", linestyle="--", label="real images")
    axes[0].set(xlabel="guidance scale", title="class accuracy (evaluator)", ylim=(0, 1.02))
    axes[1].set(xlabel="guidance scale", title="feature FID (lower is better)", yscale="log")
    axes[2].set(xlabel="class accuracy", ylabel="feature FID", title="the trade-off (lower right is better)",
                yscale="log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{results['checkpoint']}: guidance methods against scale ({results['config']['samples']} samples "
                 f"per point, DDIM-50)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_temperatures(results: dict, path: Path, plt):
    """Accuracy, diversity and feature FID against a normalizing flow's sampling temperature."""
    rows = results["temperatures"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    real = results.get("real_data")
    for ax, (key, title) in zip(axes, [("accuracy", "class accuracy (evaluator)"),
                                       ("diversity", "diversity (within-class feature distance)"),
                                       ("fid", "feature FID (lower is better)")]):
        ax.plot([r["temperature"] for r in rows], [r[key] for r in rows], marker="o", label="samples")
        if real:
            ax.axhline(real[key], color="0.5", linestyle="--", label="real images")
        ax.set(xlabel="temperature T", title=title)
    axes[0].set_ylim(0, 1.02)
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"{results['checkpoint']}: what the temperature does ({results['config']['samples']} samples per point)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SAMPLER_COLOURS = {"ddpm": "tab:blue", "ddim": "tab:orange", "ode euler": "tab:green", "ode heun": "tab:red",
                   "ode dpm++2m": "tab:purple"}


def plot_fid_against_nfe(results: dict, path: Path, plt):
    """One panel per self-conditioning setting; colour = sampler, dashed = log-SNR spacing, grey band = real data."""
    from matplotlib.ticker import FormatStrFormatter

    name = results["checkpoint"]
    settings = sorted({r["self_condition"] for r in results["samplers"]}, reverse=True)
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], settings):
        series: dict = {}
        for r in results["samplers"]:
            if r["self_condition"] == setting:
                sampler = r["sampler"] if r["sampler"] != "ode" else f"ode {r['solver']}"
                series.setdefault((sampler, r.get("spacing", "uniform")), []).append((r["nfe"], r["fid"]))
        for (sampler, spacing), points in series.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=SAMPLER_COLOURS.get(sampler),
                    linestyle="--" if spacing == "log-snr" else "-",
                    label=sampler + (" (log-SNR spacing)" if spacing == "log-snr" else ""))
        if "real_data" in results:
            real = results["real_data"]
            ax.axhspan(real["fid"] - real["fid_std"], real["fid"] + real["fid_std"], color="0.85", zorder=0,
                       label=f"real images (±1 sd, {real['draws']} draws)")
        ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)",
               title=f"self-conditioning {'on' if setting else 'off'}")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FormatStrFormatter("%.1f"))
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("feature FID (lower is better)")
    fig.suptitle(f"{name}: quality vs. sampling cost\n({results['config']['samples']} samples per point; "
                 f"DDIM = ODE-Euler: their lines coincide)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_guidance(results: dict, path: Path, plt):
    """Accuracy, diversity and feature FID against guidance scale, one line per guidance mode."""
    from matplotlib.ticker import FormatStrFormatter

    name = results["checkpoint"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    metrics = [("accuracy", "class accuracy (evaluator)"), ("diversity", "diversity (within-class feature distance)"),
               ("fid", "feature FID (lower is better)")]
    labels = {"cfg": "classifier-free", "classifier": "classifier"}
    for mode in sorted({r["guidance"] for r in results["guidance"]}):
        rows = [r for r in results["guidance"] if r["guidance"] == mode]
        for ax, (key, _) in zip(axes, metrics):
            ax.plot([r["scale"] for r in rows], [r[key] for r in rows], marker="o", label=labels.get(mode, mode))
    real = results.get("real_data")
    for ax, (key, title) in zip(axes, metrics):
        if real:
            ax.axhline(real[key], color="0.5", linestyle="--", label="real images")
        ax.set(xlabel="guidance scale", title=title)
    axes[0].set_ylim(0, 1.02)
    axes[2].set_yscale("log")
    for set_formatter in (axes[2].yaxis.set_major_formatter, axes[2].yaxis.set_minor_formatter):
        set_formatter(FormatStrFormatter("%.1f"))
    axes[0].legend()
    fig.suptitle(f"{name}: what the guidance scale does ({results['config']['samples']} samples per point; "
                 f"scale 0 = unconditional)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
