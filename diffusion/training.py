"""Training: a TrainConfig dataclass, presets for the shipped checkpoints, and the Trainer loop.

One process or many under torchrun (DistributedDataParallel; NCCL on GPUs, gloo on CPU). EMA with
ema-pytorch, AdamW with linear warm-up, gradient clipping. A training-state file (safetensors, never a
pickle) is written atomically every `save_every` steps; `resume` continues from it bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ema_pytorch import EMA
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from .checkpoint import atomic_write, model_config, save_checkpoint
from .data import FASHION_MNIST_DIR, ImageDataset, load_fashion_mnist, load_image_folder, to_model_range
from .denoiser import Denoiser, Guidance
from .images import image_grid, to_pil
from .networks import Classifier, ClassifierConfig, UNet, UNetConfig
from .objective import ObjectiveConfig, diffusion_loss
from .sampling import draw_noise, image_generators, sample_ddim
from .schedules import Schedule, time_grid

TASKS = ("denoiser", "noisy-classifier", "evaluator")
STATE_FILE = "state.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    task: str = "denoiser"  # denoiser | noisy-classifier | evaluator
    run_dir: str = "runs/fashion-diffusion"
    data: str = "fashion-mnist"  # "fashion-mnist" or a folder with one subfolder of images per class
    data_dir: str = str(FASHION_MNIST_DIR)
    image_size: int = 28
    image_channels: int = 1
    hflip: bool = True  # random horizontal flips
    steps: int = 10_000
    max_minutes: float = 0.0  # > 0: stop (and export) after this much wall time, whatever `steps` says
    batch_size: int = 64  # per process
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    lr_drop_at: int = 0  # > 0: multiply the learning rate by lr_drop_factor from this step on
    lr_drop_factor: float = 0.2
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_power: float = 2 / 3  # EMA warm-up: decay = 1 - (1 + step)^-power, capped at ema_decay
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(num_classes=10, self_condition=True, blocks_per_level=1))
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    noise_schedule: str = "vp-cosine"  # noisy-classifier: the schedule used to noise its inputs
    sample_every: int = 1000  # write a grid of EMA samples every N steps (0: never)
    save_every: int = 250
    log_every: int = 50
    seed: int = 0
    bf16: bool = False  # bf16 autocast, CUDA only (slow on CPUs without native bf16)
    export_to: str = ""  # write the exported checkpoint here when training ends
    name: str = "model"
    card: str = ""

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        nested = {"unet": UNetConfig, "classifier": ClassifierConfig, "objective": ObjectiveConfig}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        values = dict(data)
        for key, kind in nested.items():
            if isinstance(values.get(key), dict):
                sub = {k: tuple(v) if isinstance(v, list) else v for k, v in values[key].items()}
                values[key] = kind(**sub)
        return cls(**values)


PRESETS = {
    "fashion-diffusion": TrainConfig(
        run_dir="runs/fashion-diffusion", export_to="checkpoints/fashion-diffusion.safetensors",
        name="fashion-diffusion", steps=3217,  # the shipped run: 95 min on 1 CPU core, stopped by --max-minutes
        objective=ObjectiveConfig(schedule="vp-cosine", parameterization="v", self_condition=True, label_dropout=0.1),
        card="Class-conditional Fashion-MNIST diffusion model: VP cosine schedule, v-prediction, "
             "self-conditioning, 10% label dropout for classifier-free guidance."),
    "fashion-flow": TrainConfig(
        run_dir="runs/fashion-flow", export_to="checkpoints/fashion-flow.safetensors", name="fashion-flow",
        steps=3231,  # the shipped run: 95 min on 1 CPU core, stopped by --max-minutes
        objective=ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=True, label_dropout=0.1,
                                  time_sampling="logit-normal", uniform_fraction=0.1),
        card="Class-conditional Fashion-MNIST rectified flow: velocity prediction, logit-normal time sampling "
             "(SD3) with 10% of times drawn uniformly so that both ends are seen, self-conditioning, 10% label dropout for classifier-free guidance."),
    "fashion-noisy-classifier": TrainConfig(
        task="noisy-classifier", run_dir="runs/fashion-noisy-classifier", steps=2000, batch_size=128, lr=2e-3,
        export_to="checkpoints/fashion-noisy-classifier.safetensors", name="fashion-noisy-classifier",
        sample_every=0, classifier=ClassifierConfig(base_channels=16, noise_conditioned=True, dropout=0.0),
        card="Noise-level-conditioned Fashion-MNIST classifier for classifier guidance. Sees x_t scaled to unit "
             "variance and the log-SNR, so it serves the diffusion and the flow model alike."),
    "fashion-evaluator": TrainConfig(
        task="evaluator", run_dir="runs/fashion-evaluator", steps=3000, batch_size=128, lr=2e-3, lr_drop_at=2000,
        export_to="checkpoints/fashion-evaluator.safetensors", name="fashion-evaluator", sample_every=0,
        classifier=ClassifierConfig(noise_conditioned=False, dropout=0.2),
        card="Clean-image Fashion-MNIST classifier used only for evaluation (class accuracy of samples and "
             "feature FID); never used for guidance."),
}


# --- distributed helpers ----------------------------------------------------------------------
def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def default_device(rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
        return torch.device("cuda", local)
    return torch.device("cpu")


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of all parameters' bytes, for checking that ranks agree."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --- the trainer ------------------------------------------------------------------------------
class Trainer:
    def __init__(self, config: TrainConfig, dataset: ImageDataset | None = None, device=None):
        self.config = c = config
        self.rank, self.world = _distributed()
        self.device = torch.device(device) if device else default_device(self.rank)
        torch.manual_seed(c.seed)
        self.dataset = dataset or load_dataset(c)
        self.network = self._build_network().to(self.device)
        self.model = (DistributedDataParallel(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                      if self.world > 1 else self.network)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.ema = EMA(self.network, beta=c.ema_decay, update_after_step=0, update_every=1, power=c.ema_power,
                       include_online_model=False)
        self.sampler = DistributedSampler(range(len(self.dataset)), num_replicas=self.world, rank=self.rank,
                                          shuffle=True, seed=c.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // c.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"data set of {len(self.dataset)} images is smaller than one batch per process")
        self._epoch_indices = (-1, None)
        self.step, self.wall_seconds = 0, 0.0
        self.run_dir = Path(c.run_dir)

    def _build_network(self):
        c = self.config
        if c.task == "denoiser":
            return UNet(replace(c.unet, image_size=c.image_size, image_channels=c.image_channels,
                                num_classes=len(self.dataset.class_names) if c.unet.num_classes else 0,
                                self_condition=c.objective.self_condition))
        return Classifier(replace(c.classifier, image_size=c.image_size, image_channels=c.image_channels,
                                  num_classes=len(self.dataset.class_names),
                                  noise_conditioned=c.task == "noisy-classifier"))

    # --- data -----------------------------------------------------------------------------
    def batch_for_step(self, step: int):
        """The batch of a step is a function of (seed, step, rank) alone, so resuming repeats nothing."""
        c = self.config
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._epoch_indices[0] != epoch:
            self.sampler.set_epoch(epoch)
            self._epoch_indices = (epoch, torch.tensor(list(self.sampler)))
        indices = self._epoch_indices[1][position * c.batch_size:(position + 1) * c.batch_size]
        images = to_model_range(self.dataset.images[indices]).to(self.device)
        labels = self.dataset.labels[indices].to(self.device)
        if c.hflip:
            flip = torch.rand(len(indices), generator=torch.Generator().manual_seed(c.seed * 1_000_003 + step)) < 0.5
            images = torch.where(flip.to(self.device)[:, None, None, None], images.flip(-1), images)
        return images, labels

    # --- one step -------------------------------------------------------------------------
    def loss(self, images, labels):
        c = self.config
        if c.task == "denoiser":
            return diffusion_loss(self.model, images, labels if c.unet.num_classes else None, c.objective)
        if c.task == "noisy-classifier":
            schedule = Schedule(c.noise_schedule)
            t = torch.rand(images.shape[0], device=self.device)
            alpha, sigma = (v[:, None, None, None] for v in schedule.alpha_sigma(t))
            x_t = alpha * images + sigma * torch.randn_like(images)
            logits = self.model(x_t / (alpha**2 + sigma**2).sqrt(), schedule.log_snr(t).float())
        else:
            logits = self.model(_random_shift(images))
        return F.cross_entropy(logits.float(), labels)

    def train_step(self) -> float:
        c = self.config
        drop = c.lr_drop_factor if c.lr_drop_at and self.step >= c.lr_drop_at else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = c.lr * drop * min(1.0, (self.step + 1) / max(c.warmup_steps, 1))
        images, labels = self.batch_for_step(self.step)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=c.bf16 and self.device.type == "cuda")
        with autocast:
            loss = self.loss(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), c.grad_clip)
        self.optimizer.step()
        self.ema.update()
        self.step += 1
        return loss.item()

    # --- loop -----------------------------------------------------------------------------
    def train(self, progress: bool = True):
        from tqdm import tqdm

        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.run_dir / "config.json").write_text(json.dumps(c.to_dict(), indent=2))
        bar = tqdm(total=c.steps, initial=self.step, disable=not progress or self.rank != 0, dynamic_ncols=True)
        started, start_step, smoothed = time.time(), self.step, None
        while self.step < c.steps:
            loss = self.train_step()
            smoothed = loss if smoothed is None else 0.98 * smoothed + 0.02 * loss
            elapsed = time.time() - started
            bar.update(1)
            if self.step % c.log_every == 0:
                bar.set_postfix(loss=f"{smoothed:.4f}", steps_per_s=f"{(self.step - start_step) / elapsed:.2f}")
                self._log({"step": self.step, "loss": smoothed, "elapsed_s": self.wall_seconds + elapsed})
            out_of_time = c.max_minutes > 0 and self.wall_seconds + elapsed >= 60 * c.max_minutes
            if self.step % c.save_every == 0 or self.step == c.steps or out_of_time:
                self.wall_seconds += time.time() - started
                started, start_step = time.time(), self.step
                self.save_state()
            if c.sample_every and self.step % c.sample_every == 0 and c.task == "denoiser" and self.rank == 0:
                self.write_sample_grid(self.run_dir / f"samples-{self.step:06d}.png")
            if out_of_time:
                break
        bar.close()
        (self.run_dir / f"digest-rank{self.rank}.txt").write_text(weights_digest(self.network))
        if c.export_to and self.rank == 0:
            self.export(c.export_to)
        if self.world > 1:
            dist.barrier()

    def _log(self, record: dict):
        if self.rank == 0:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # --- state ----------------------------------------------------------------------------
    def save_state(self):
        """Model, EMA, optimizer, step and RNG in one safetensors file, written atomically (rank 0)."""
        if self.rank != 0:
            return
        tensors = {f"model.{k}": v for k, v in self.network.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
        optimizer = self.optimizer.state_dict()
        for index, state in optimizer["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        metadata = {"step": str(self.step), "wall_seconds": repr(self.wall_seconds),
                    "config": json.dumps(self.config.to_dict()),
                    "param_groups": json.dumps(optimizer["param_groups"])}
        atomic_write(self.run_dir / STATE_FILE, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    def load_state(self):
        path = self.run_dir / STATE_FILE
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            metadata = f.metadata()
        tensors = load_file(path)
        group = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        self.network.load_state_dict(group("model."))
        self.ema.load_state_dict(group("ema."))
        state: dict = {}
        for key, value in group("optim.").items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
        torch.set_rng_state(tensors["rng.torch"])
        self.step, self.wall_seconds = int(metadata["step"]), float(metadata["wall_seconds"])

    # --- outputs --------------------------------------------------------------------------
    @torch.no_grad()
    def write_sample_grid(self, path: Path, columns: int = 8, steps: int = 20, scale: float = 3.0):
        """One row per class, DDIM-20 with classifier-free guidance, from the EMA weights."""
        network = self.ema.ema_model.eval()
        schedule = Schedule(self.config.objective.schedule)
        classes = len(self.dataset.class_names)
        labels = torch.arange(classes, device=self.device).repeat_interleave(columns)
        guidance = Guidance("cfg", scale) if self.config.unet.num_classes else Guidance()
        denoise = Denoiser(network, schedule, self.config.objective.parameterization,
                           labels=labels if self.config.unet.num_classes else None, guidance=guidance,
                           self_condition=self.config.objective.self_condition)
        x_T = draw_noise(image_generators(0, len(labels)), (self.config.image_channels, self.config.image_size,
                                                            self.config.image_size), self.device)
        images = sample_ddim(denoise, x_T, time_grid(schedule, steps), schedule=schedule)
        to_pil(image_grid(images, columns), scale=2).save(path)

    def export(self, out) -> Path:
        c = self.config
        kind = c.task
        network = self.ema.ema_model
        config = model_config(kind, network, class_names=self.dataset.class_names,
                              schedule=c.objective.schedule if kind == "denoiser" else None,
                              parameterization=c.objective.parameterization if kind == "denoiser" else None)
        training = {"data": c.data, "steps": self.step, "batch_size": c.batch_size * self.world,
                    "processes": self.world, "ema_decay": c.ema_decay, "lr": c.lr,
                    "wall_minutes": round(self.wall_seconds / 60, 1), "device": str(self.device),
                    "torch": torch.__version__, "command": f"python -m diffusion train --preset {c.name}",
                    "config": c.to_dict()}
        if kind != "denoiser":
            training["test_accuracy"] = self.test_accuracy()
        card = (c.card + f" Trained by this project: {self.step} steps at batch {c.batch_size * self.world} in "
                f"{self.wall_seconds / 60:.0f} min on {self.device} (torch {torch.__version__}).")
        return save_checkpoint(out, kind, network, config, training, card.strip())

    @torch.no_grad()
    def test_accuracy(self) -> float | None:
        """Accuracy of the EMA classifier on the clean Fashion-MNIST test split (None for other data)."""
        if self.config.data != "fashion-mnist":
            return None
        test = load_fashion_mnist("test", self.config.data_dir)
        network = self.ema.ema_model.eval()
        correct = 0
        for start in range(0, len(test), 500):
            images = to_model_range(test.images[start:start + 500]).to(self.device)
            log_snr = torch.full((len(images),), 20.0, device=self.device) if self.config.task == "noisy-classifier" else None
            correct += int((network(images, log_snr).argmax(1).cpu() == test.labels[start:start + 500]).sum())
        return correct / len(test)


def _random_shift(images: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Random translation by up to `pad` pixels (reflect-padded crop), a cheap augmentation for classifiers."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    return padded[:, :, dy:dy + h, dx:dx + w]


def load_dataset(config: TrainConfig) -> ImageDataset:
    if config.data == "fashion-mnist":
        return load_fashion_mnist("train", config.data_dir)
    return load_image_folder(config.data, config.image_size, config.image_channels)
