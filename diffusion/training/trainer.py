"""The Trainer loop: one process or many under torchrun (DistributedDataParallel; NCCL on GPUs, gloo on CPU).

What is learned comes from a task object (training.tasks); the loop is the same for every task: EMA with
ema-pytorch, AdamW with linear warm-up, gradient clipping. A training-state file (safetensors, never a
pickle) is written atomically every `save_every` steps; `resume` continues from it bit for bit.

The loop keeps a GPU busy (issue 30, item 3): the data set lives on the device and batches are indexed there, the
loss is summed on the device and read once per log interval (a step makes no host sync), the EMA updates every
weight in one foreach call, and `compile` compiles the network for the steps.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from ema_pytorch import EMA
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ..formats.checkpoint import save_checkpoint
from ..formats.outputs import atomic_write
from ..formats.data import ImageDataset
from ..serving.distributed import default_device, process_group
from ..formats.images import image_grid, to_pil
from ..formats.outputs import refuse_to_replace
from .config import TrainConfig
from .registry import make_task
from .tasks import PREVIEW_COLUMNS

STATE_FILE = "state.safetensors"


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of all parameters' bytes, for checking that ranks agree."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def learning_rate(config: TrainConfig, step: int) -> float:
    """The rate of step `step` (0-based): linear warm-up to config.lr over warmup_steps, then constant, times
    lr_drop_factor from step lr_drop_at on. Parameter groups scale it by their own "lr_scale"."""
    warmup = min(1.0, (step + 1) / max(config.warmup_steps, 1))
    drop = config.lr_drop_factor if config.lr_drop_at and step >= config.lr_drop_at else 1.0
    return config.lr * warmup * drop


def rank_seed(seed: int, rank: int) -> int:
    """Each process draws its own times, noise and label dropout: the same seed on every rank would give every
    rank the same draws on different images."""
    return seed + 1_000_003 * rank


def on_device(dataset, device):
    """The data set with its tensors moved to the device once, so a batch is indexed there (a data set is a dataclass
    of tensors and metadata: ImageDataset, PairSet)."""
    return replace(dataset, **{f.name: getattr(dataset, f.name).to(device) for f in fields(dataset)
                               if isinstance(getattr(dataset, f.name), torch.Tensor)})


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A small CPU tensor on the device without a host sync (a copy from pageable memory waits for the device)."""
    return t.pin_memory().to(device, non_blocking=True) if torch.device(device).type == "cuda" else t


class LossInterval:
    """The losses of the steps since the last log line, summed on the device; read() syncs once and starts anew."""

    def __init__(self, device):
        self.total = torch.zeros((), device=device)
        self.steps, self.started = 0, time.time()

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.float()
        self.steps += 1

    def read(self) -> dict:
        """{"loss": the interval's mean loss, "steps_per_s": its rate}, then a new interval. Reading the sum waits
        for the device, so the rate counts the steps' work, not only their launch."""
        loss = self.total.item() / max(self.steps, 1)
        record = {"loss": loss, "steps_per_s": self.steps / max(time.time() - self.started, 1e-9)}
        self.total.zero_()
        self.steps, self.started = 0, time.time()
        return record


# --- the trainer ------------------------------------------------------------------------------
class Trainer:
    def __init__(self, config: TrainConfig, dataset: ImageDataset | None = None, device=None, overwrite: bool = False):
        """overwrite: whether the export at the end may replace an existing file at config.export_to (checked here,
        before any work, and again when exporting)."""
        self.config = c = config
        self.overwrite = overwrite
        if c.export_to:
            refuse_to_replace(c.export_to, overwrite)
        self.rank, self.world = process_group()
        self.device = torch.device(device) if device else default_device(self.rank)
        torch.manual_seed(c.seed)
        self.task = make_task(c)
        self.dataset = on_device(dataset or self.task.load_data(), self.device)
        self.network = self.task.build_network(self.dataset.class_names).to(self.device)
        self.model = (DistributedDataParallel(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                      if self.world > 1 else self.network)
        if c.compile:
            self.model = torch.compile(self.model)
        self.optimizer = torch.optim.AdamW(self.task.parameter_groups(self.network), lr=c.lr,
                                           weight_decay=c.weight_decay)
        torch.manual_seed(rank_seed(c.seed, self.rank))  # the weights are equal on every rank; the draws are not
        # Its step counter stays on the CPU, so reading it syncs nothing; use_foreach: one lerp over all weights.
        self.ema = EMA(self.network, beta=c.ema_decay, update_after_step=0, update_every=1, power=c.ema_power,
                       include_online_model=False, use_foreach=True)
        self.sampler = DistributedSampler(range(len(self.dataset)), num_replicas=self.world, rank=self.rank,
                                          shuffle=True, seed=c.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // c.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"data set of {len(self.dataset)} images is smaller than one batch per process")
        self._epoch_indices = (-1, None)
        self.step, self.wall_seconds = 0, 0.0
        self.run_dir = Path(c.run_dir)

    # --- data -----------------------------------------------------------------------------
    def batch_for_step(self, step: int) -> tuple[torch.Tensor, ...]:
        """The batch of a step is a function of (seed, step, rank) alone, so resuming repeats nothing. It is what
        the data set's batch() gives: (images, labels), or reflow's (images, noise, labels); a flip mirrors every
        image-shaped tensor of a row alike."""
        c = self.config
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._epoch_indices[0] != epoch:
            self.sampler.set_epoch(epoch)
            self._epoch_indices = (epoch, torch.tensor(list(self.sampler), device=self.device))
        indices = self._epoch_indices[1][position * c.batch_size:(position + 1) * c.batch_size]
        batch = self.dataset.batch(indices, self.device)
        if c.hflip:
            flip = torch.rand(len(indices), generator=torch.Generator().manual_seed(c.seed * 1_000_003 + step)) < 0.5
            flip = to_device(flip, self.device)[:, None, None, None]
            batch = tuple(torch.where(flip, t.flip(-1), t) if t.dim() == 4 else t for t in batch)
        return batch

    # --- one step -------------------------------------------------------------------------
    def loss(self, *batch):
        return self.task.loss(self.model, *batch)

    def train_step(self) -> torch.Tensor:
        """One optimiser step; returns its loss, detached, on the device (reading it would wait for the device)."""
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("lr_scale", 1.0) * learning_rate(c, self.step)
        batch = self.batch_for_step(self.step)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=c.bf16 and self.device.type == "cuda")
        with autocast:
            loss = self.loss(*batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), c.grad_clip)
        self.optimizer.step()
        self.ema.update()
        self.step += 1
        return loss.detach()

    # --- loop -----------------------------------------------------------------------------
    def train(self, progress: bool = True):
        from tqdm import tqdm

        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.run_dir / "config.json").write_text(json.dumps(c.to_dict(), indent=2))
        bar = tqdm(total=c.steps, initial=self.step, disable=not progress or self.rank != 0, dynamic_ncols=True)
        started = time.time()
        interval = LossInterval(self.device)
        while self.step < c.steps:
            interval.add(self.train_step())
            elapsed = time.time() - started
            bar.update(1)
            if self.step % c.log_every == 0:
                record = interval.read()  # the interval's one host sync
                bar.set_postfix(loss=f"{record['loss']:.4f}", steps_per_s=f"{record['steps_per_s']:.2f}")
                self._log({"step": self.step} | record | {"elapsed_s": self.wall_seconds + elapsed})
            out_of_time = c.max_minutes > 0 and self.wall_seconds + elapsed >= 60 * c.max_minutes
            if self.step % c.save_every == 0 or self.step == c.steps or out_of_time:
                self.wall_seconds += time.time() - started
                started = time.time()
                self.save_state()
            if c.sample_every and self.step % c.sample_every == 0 and self.rank == 0:
                self.write_sample_grid(self.run_dir / f"samples-{self.step:06d}.png")
            if out_of_time:
                break
        bar.close()
        (self.run_dir / f"digest-rank{self.rank}.txt").write_text(weights_digest(self.network))
        if c.export_to and self.rank == 0:
            self.export(c.export_to, overwrite=self.overwrite)
        if self.world > 1:
            dist.barrier()

    def _log(self, record: dict):
        if self.rank == 0:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # --- state ----------------------------------------------------------------------------
    def rng_states(self) -> dict[str, torch.Tensor]:
        """This process's random-number states: the CPU generator's and, on a GPU, the device's."""
        states = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def save_state(self):
        """Model, EMA, optimizer, step and every rank's RNG states in one safetensors file, written atomically by
        rank 0 (every rank must call it: the RNG states are gathered)."""
        ranks = [self.rng_states()]
        if self.world > 1:
            ranks = [None] * self.world
            dist.all_gather_object(ranks, {k: v.cpu() for k, v in self.rng_states().items()})
        if self.rank != 0:
            return
        tensors = {f"model.{k}": v for k, v in self.network.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
        optimizer = self.optimizer.state_dict()
        for index, state in optimizer["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        for rank, states in enumerate(ranks):
            tensors |= {f"rng.{name}.rank{rank}": state for name, state in states.items()}
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
        own = f"rank{self.rank}"
        if self.rank == 0 and "rng.torch" in tensors:  # a state file from before per-rank states
            tensors[f"rng.torch.{own}"] = tensors["rng.torch"]
        if f"rng.torch.{own}" not in tensors:
            raise ValueError(f"{path} holds no random-number state for rank {self.rank} (saved by fewer processes); "
                             f"resume with as many processes as the run had")
        torch.set_rng_state(tensors[f"rng.torch.{own}"])
        if self.device.type == "cuda" and f"rng.cuda.{own}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{own}"], self.device)
        self.step, self.wall_seconds = int(metadata["step"]), float(metadata["wall_seconds"])

    # --- outputs --------------------------------------------------------------------------
    @torch.no_grad()
    def write_sample_grid(self, path: Path):
        """The task's preview (one row per class) from the EMA weights, if it has one."""
        images = self.task.preview(self.ema.ema_model.eval(), self.dataset.class_names, self.device)
        if images is not None:
            to_pil(image_grid(images, PREVIEW_COLUMNS), scale=2).save(path)

    def export(self, out, overwrite: bool = False) -> Path:
        """The EMA weights as a checkpoint file at `out`, which must not exist unless `overwrite`."""
        c = self.config
        refuse_to_replace(out, overwrite)
        network = self.ema.ema_model.eval()
        training = {"data": c.data, "steps": self.step, "batch_size": c.batch_size * self.world,
                    "processes": self.world, "ema_decay": c.ema_decay, "lr": c.lr,
                    "wall_minutes": round(self.wall_seconds / 60, 1), "device": str(self.device),
                    "torch": torch.__version__, "command": f"python -m diffusion train --preset {c.name}",
                    "config": c.to_dict()}
        training |= self.task.held_out_metrics(network, self.device)
        card = (c.card + f" Trained by this project: {self.step} steps at batch {c.batch_size * self.world} in "
                f"{self.wall_seconds / 60:.0f} min on {self.device} (torch {torch.__version__}).")
        config = self.task.export_config(network, self.dataset.class_names)
        return save_checkpoint(out, self.task.kind, self.task.exported(network), config, training, card.strip())

