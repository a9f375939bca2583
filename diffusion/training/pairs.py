"""Reflow's training data: (noise, image, class) triples from a teacher's probability-flow ODE, x = T(z, y).

Liu, Gong & Liu 2022 ("Flow Straight and Fast", Alg. 1): draw z ~ N(0, I), solve the teacher's ODE from z to an
image x, and retrain on the coupling (z, x) instead of an independent (noise, data) draw. The pairs are written as
numbered safetensors shards; each shard is written atomically and records the teacher (file SHA-256), solver,
steps, guidance and its index range, so a killed run continues at the first missing shard and a folder never mixes
pairs of different teachers or settings. Pair i has the class i mod C and the noise of image i of the seed
(sampling.image_generators), so a shard's contents depend on nothing but (settings, index range), and a run
sharded over torchrun writes the same bytes as one process (at the same thread count).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..formats.checkpoint import load_checkpoint
from ..formats.outputs import atomic_write
from ..formats.data import DataError
from ..core.denoiser import Denoiser, Guidance
from ..serving.engine import SampleRequest, guidance_of
from ..core.guidance import GUIDANCE_METHODS
from ..serving.distributed import map_sharded, on_main, process_group
from ..core.sampling import ODE_SOLVERS, draw_noise, image_generators, sample_ode
from ..core.schedules import time_grid

PAIRS_FORMAT = "diffusion-playground/reflow-pairs-1"
SHARD_PATTERN = re.compile(r"pairs-(\d{5})\.safetensors")
# The classifier-free methods (each a modified CFG); autoguidance and classifier guidance need a second network
PAIR_METHODS = tuple(name for name, method in GUIDANCE_METHODS.items() if method.settings["guidance"] == "cfg")


@dataclass(frozen=True)
class PairConfig:
    teacher: str  # a denoiser checkpoint file
    count: int = 20_000
    shard_size: int = 1000
    solver: str = "dpm++2m"
    steps: int = 20
    scale: float = 2.0  # classifier-free guidance of the teacher (1: the conditional model alone)
    method: str = "cfg"  # how it guides: a classifier-free method of guidance.GUIDANCE_METHODS (at `scale`)
    self_condition: bool = True
    seed: int = 1  # not the evaluation's seed 0: the student is scored on noise it was not trained on
    batch_size: int = 100

    def __post_init__(self):
        if self.solver not in ODE_SOLVERS:
            raise ValueError(f"solver must be one of {ODE_SOLVERS}, got {self.solver!r}")
        for name in ("count", "shard_size", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.scale <= 20:
            raise ValueError(f"scale must be in [0, 20], got {self.scale}")
        if self.method not in PAIR_METHODS:
            raise ValueError(f"method must be one of {', '.join(PAIR_METHODS)}, got {self.method!r}")

    def guidance(self) -> Guidance:
        """The teacher's guidance: the method's settings at this scale (none at scale 1), as a request has them."""
        if self.scale == 1:
            return Guidance()
        return guidance_of(SampleRequest(checkpoint=self.teacher, scale=self.scale,
                                         **GUIDANCE_METHODS[self.method].settings))

    def settings(self, teacher_sha256: str) -> dict:
        """What makes two shards interchangeable: everything but count and batch size (which change nothing)."""
        kept = {k: v for k, v in asdict(self).items() if k not in ("count", "batch_size", "teacher")}
        if self.method == "cfg":  # shards made before there were methods hold plain CFG and name none
            del kept["method"]
        return kept | {"teacher_sha256": teacher_sha256, "teacher_name": Path(self.teacher).stem}


@dataclass
class PairSet:
    noise: torch.Tensor  # (N, C, H, W) z, the ODE's start
    images: torch.Tensor  # (N, C, H, W) x = T(z, y) in [-1, 1]
    labels: torch.Tensor  # (N,) int64
    class_names: tuple[str, ...]
    settings: dict

    def __len__(self):
        return len(self.labels)

    def batch(self, indices: torch.Tensor, device) -> tuple[torch.Tensor, ...]:
        """(x, z, y) of the given pairs, on the device."""
        return (self.images[indices].to(device), self.noise[indices].to(device), self.labels[indices].to(device))


def shard_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"pairs-{index:05d}.safetensors"


def _shard_metadata(path: Path) -> dict:
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for malformed files
        raise DataError(f"{path}: not a readable pair shard ({error})") from error
    if metadata.get("format") != PAIRS_FORMAT:
        raise DataError(f"{path}: not a reflow pair shard (format {metadata.get('format')!r}, expected {PAIRS_FORMAT!r})")
    try:
        return {"settings": json.loads(metadata["settings"]), "first": int(metadata["first"]),
                "count": int(metadata["count"]), "class_names": json.loads(metadata["class_names"]),
                "seconds": float(metadata.get("seconds", "nan"))}
    except (KeyError, ValueError, TypeError) as error:
        raise DataError(f"{path}: pair shard metadata is incomplete ({error})") from error


def generate_pairs(config: PairConfig, out_dir, device="cpu", log=print, part: tuple[int, int] = (0, 1)) -> list[Path]:
    """Write the shards that are missing (resumable). Returns every shard's path, in order. Under torchrun the
    missing shards are made K at a time, one per rank, and written by rank 0 as each round ends. part = (i, n): only
    shards k with k mod n = i (`pairs --part`: n runs without torchrun sharing one folder)."""
    index, parts = part
    if not 0 <= index < parts:
        raise ValueError(f"part must be i/n with 0 <= i < n, got {index}/{parts}")
    out = Path(out_dir)
    teacher = load_checkpoint(config.teacher, device)
    if teacher.kind != "denoiser":
        raise DataError(f"the teacher {config.teacher} is a {teacher.kind}, not a denoiser")
    classes = len(teacher.class_names)
    if config.scale != 1 and (not classes or teacher.network.config.null_class is None):
        raise DataError("guided pairs (scale != 1) need a class-conditional teacher with a null class")
    settings = config.settings(teacher.sha256)
    ranges = [(first, min(config.shard_size, config.count - first)) for first in range(0, config.count, config.shard_size)]
    paths = [shard_path(out, shard) for shard in range(len(ranges))]
    wanted = [shard for shard in range(len(ranges)) if shard % parts == index]
    missing = on_main(lambda: missing_shards(out, wanted, ranges, settings))
    world = process_group()[1]
    for round_start in range(0, len(missing), world):
        shards = missing[round_start:round_start + world]
        made = map_sharded(lambda shard: make_shard(teacher, config, *ranges[shard], device), shards)
        for shard, (tensors, seconds) in zip(shards, made or []):  # rank 0 writes; the others made their share
            first, count = ranges[shard]
            metadata = {"format": PAIRS_FORMAT, "settings": json.dumps(settings), "first": str(first),
                        "count": str(count), "class_names": json.dumps(list(teacher.class_names)),
                        "seconds": f"{seconds:.3f}"}
            atomic_write(paths[shard], lambda tmp: save_file(tensors, tmp, metadata=metadata))
            log(f"{paths[shard].name}: pairs {first}-{first + count - 1} in {seconds:.1f} s")
    return paths


def missing_shards(out: Path, wanted: list[int], ranges: list[tuple[int, int]], settings: dict) -> list[int]:
    """The wanted shards not yet in `out` (created if new); DataError for a shard there of other settings."""
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    for shard in wanted:
        path = shard_path(out, shard)
        if not path.exists():
            missing.append(shard)
            continue
        found = _shard_metadata(path)
        if found["settings"] != settings or (found["first"], found["count"]) != ranges[shard]:
            raise DataError(f"{path} was made with other settings or another teacher ({found['settings']}); "
                            f"use a new folder for these pairs")
    return missing


def make_shard(teacher, config: PairConfig, first: int, count: int, device) -> tuple[dict[str, torch.Tensor], float]:
    """Pairs first..first + count - 1 as CPU tensors {"noise", "images", "labels"}, and the seconds they took."""
    started = time.perf_counter()
    network, schedule = teacher.network.eval(), teacher.schedule
    classes = len(teacher.class_names)
    shape = (teacher.config["image_channels"], teacher.config["image_size"], teacher.config["image_size"])
    noise, images, labels = [], [], []
    for start in range(first, first + count, config.batch_size):
        n = min(config.batch_size, first + count - start)
        z = draw_noise(image_generators(config.seed, n, start), shape)
        y = torch.arange(start, start + n) % classes if classes else None
        denoise = Denoiser(network, schedule, teacher.parameterization, labels=None if y is None else y.to(device),
                           guidance=config.guidance(), self_condition=config.self_condition and teacher.self_condition)
        with torch.inference_mode():
            x = sample_ode(denoise, z.to(device), time_grid(schedule, config.steps), schedule=schedule,
                           solver=config.solver)
        noise.append(z)
        images.append(x.float().clamp(-1, 1).cpu())
        labels.append(y if y is not None else torch.zeros(n, dtype=torch.long))
    tensors = {"noise": torch.cat(noise).contiguous(), "images": torch.cat(images).contiguous(),
               "labels": torch.cat(labels).contiguous()}
    return tensors, time.perf_counter() - started


def load_pairs(folder) -> PairSet:
    """All shards of a folder, checked to be one contiguous run of one teacher and settings."""
    folder = Path(folder)
    paths = sorted(p for p in folder.glob("pairs-*.safetensors") if SHARD_PATTERN.fullmatch(p.name))
    if not paths:
        raise DataError(f"no reflow pair shards (pairs-NNNNN.safetensors) in {folder}; make them with "
                        f"`python -m diffusion pairs --out {folder}`")
    noise, images, labels, settings, class_names, expected_first = [], [], [], None, None, 0
    for path in paths:
        meta = _shard_metadata(path)
        if settings is None:
            settings, class_names = meta["settings"], tuple(meta["class_names"])
        elif meta["settings"] != settings:
            raise DataError(f"{path} was made with other settings than {paths[0].name}; one folder, one teacher")
        if meta["first"] != expected_first:
            raise DataError(f"{path} starts at pair {meta['first']}, expected {expected_first} (a shard is missing)")
        with safe_open(str(path), "pt") as f:
            shard = {name: f.get_tensor(name) for name in ("noise", "images", "labels")}
        if not (len(shard["noise"]) == len(shard["images"]) == len(shard["labels"]) == meta["count"]):
            raise DataError(f"{path}: its tensors do not hold {meta['count']} pairs")
        noise.append(shard["noise"].float())
        images.append(shard["images"].float())
        labels.append(shard["labels"].long())
        expected_first += meta["count"]
    return PairSet(torch.cat(noise), torch.cat(images), torch.cat(labels), class_names, settings)
