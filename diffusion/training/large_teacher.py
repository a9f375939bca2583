"""`python -m diffusion large-teacher`: issue 31's larger teacher and its instant student, in one command for a GPU.

Three steps, each an existing command with the large presets (presets.py):
1. train the teacher (`fashion-flow-large`, 16.5 M parameters) for `teacher_minutes`, and export it;
2. make reflow pairs from it with the guided setting chosen by the guided-realism evaluation (STUDENT_GUIDANCE);
3. reflow the student (`fashion-reflow-large`) from the teacher's weights for `student_minutes`, and export it.

The exported files go to `out_dir` (not checkpoints/: a file there changes only on purpose, with its card, its row in
checkpoints/README.md and its evaluation; see the docs for the commands that judge and ship them). `--quick` runs
the same steps at a tiny size in seconds on a CPU (the tests run it). Each step resumes where it stopped: an exported
network is kept (its pairs name its bytes), a run folder continues from its last state, written pair shards are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..models import UNetConfig
from .config import TrainConfig
from .pairs import PairConfig, generate_pairs
from .presets import PRESETS, STUDENT_GUIDANCE
from .trainer import Trainer

QUICK_UNET = UNetConfig(num_classes=10, self_condition=True, base_channels=8, channel_mults=(1, 2), blocks_per_level=1,
                        attention_levels=(1,), embedding_dim=16)


@dataclass(frozen=True)
class LargeTeacherConfig:
    teacher: str = "fashion-flow-large"  # presets
    student: str = "fashion-reflow-large"
    teacher_minutes: float = 6.0  # the device budget: 15 minutes a session, start-up and transfers included
    student_minutes: float = 1.5
    pairs: int = 50_000
    pair_steps: int = 12
    pair_batch: int = 1000
    out_dir: str = "runs/large-teacher/export"
    run_root: str = "runs/large-teacher"
    data_dir: str = ""  # the Fashion-MNIST folder, if not Debian's (e.g. a copy carried to a GPU machine)
    quick: bool = False

    def __post_init__(self):
        for name in ("teacher", "student"):
            if getattr(self, name) not in PRESETS:
                raise ValueError(f"{name} must be a preset ({', '.join(PRESETS)}), got {getattr(self, name)!r}")
        if self.teacher_minutes <= 0 or self.student_minutes <= 0:
            raise ValueError("teacher_minutes and student_minutes must be > 0")
        if self.pairs < 1:
            raise ValueError(f"pairs must be >= 1, got {self.pairs}")


def teacher_config(c: LargeTeacherConfig) -> TrainConfig:
    config = replace(PRESETS[c.teacher], run_dir=f"{c.run_root}/{c.teacher}", max_minutes=c.teacher_minutes,
                     export_to=f"{c.out_dir}/{c.teacher}.safetensors", **({"data_dir": c.data_dir} if c.data_dir else {}))
    return shrunk(config) if c.quick else config


def student_config(c: LargeTeacherConfig) -> TrainConfig:
    config = replace(PRESETS[c.student], run_dir=f"{c.run_root}/{c.student}", max_minutes=c.student_minutes,
                     teacher=f"{c.out_dir}/{c.teacher}.safetensors", pairs=f"{c.run_root}/pairs",
                     export_to=f"{c.out_dir}/{c.student}.safetensors")
    return shrunk(config) if c.quick else config


def shrunk(config: TrainConfig) -> TrainConfig:
    """The same recipe at a size that trains in seconds on a CPU (--quick)."""
    return replace(config, unet=QUICK_UNET, steps=3, batch_size=8, warmup_steps=1, sample_every=0, save_every=2,
                   log_every=1, bf16=False, compile=False)


def pair_config(c: LargeTeacherConfig) -> PairConfig:
    return PairConfig(teacher=f"{c.out_dir}/{c.teacher}.safetensors", count=16 if c.quick else c.pairs,
                      shard_size=8 if c.quick else 5000, steps=2 if c.quick else c.pair_steps,
                      batch_size=8 if c.quick else c.pair_batch, **STUDENT_GUIDANCE)


def trained(config: TrainConfig, log) -> Path:
    """Train (or continue) a run and export it; a run already exported is kept as it is (its pairs name its bytes)."""
    if Path(config.export_to).exists():
        log(f"{config.name}: already trained and exported to {config.export_to}")
        return Path(config.export_to)
    trainer = Trainer(config)
    if (Path(config.run_dir) / "state.safetensors").exists():
        trainer.load_state()
        log(f"{config.name}: resumed at step {trainer.step}")
    started = time.perf_counter()
    trainer.train(progress=False)
    log(f"{config.name}: step {trainer.step} in {time.perf_counter() - started:.0f} s, exported to {config.export_to}")
    return Path(config.export_to)


def run_large_teacher(c: LargeTeacherConfig, device=None, log=print) -> dict[str, Path]:
    """The teacher, its pairs and its student: {"teacher": file, "student": file}."""
    from ..serving.distributed import default_device

    Path(c.out_dir).mkdir(parents=True, exist_ok=True)
    teacher = trained(teacher_config(c), log)
    pairs = pair_config(c)
    started = time.perf_counter()
    generate_pairs(pairs, f"{c.run_root}/pairs", device=device or default_device(), log=log)
    log(f"{pairs.count} pairs ({STUDENT_GUIDANCE}) in {time.perf_counter() - started:.0f} s")
    student = trained(student_config(c), log)
    return {"teacher": teacher, "student": student}
