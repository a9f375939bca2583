"""TrainConfig: one dataclass for every training run, saved whole as JSON with the run and the checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..formats.data import FASHION_MNIST_DIR
from ..models import ClassifierConfig, ConvNetConfig, DiTConfig, NICEConfig, UNetConfig
from ..core.objective import ObjectiveConfig


@dataclass(frozen=True)
class TrainConfig:
    task: str = "denoiser"  # a name in training.registry.TASKS (checked by registry.make_task)
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
    network: str = "UNet"  # a denoiser's backbone: "UNet" (config `unet`) or "DiT" (config `dit`)
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(num_classes=10, self_condition=True, blocks_per_level=1))
    dit: DiTConfig = field(default_factory=lambda: DiTConfig(num_classes=10, self_condition=True))
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    convnet: ConvNetConfig = field(default_factory=ConvNetConfig)  # the evaluator-convnet task's network
    nice: NICEConfig = field(default_factory=lambda: NICEConfig(num_classes=10))
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    noise_schedule: str = "vp-cosine"  # noisy-classifier: the schedule used to noise its inputs
    teacher: str = ""  # reflow: the flow checkpoint whose weights start the run and whose pairs it learns
    pairs: str = ""  # reflow: the folder of pair shards (`python -m diffusion pairs`)
    default_steps: int = 0  # reflow: the few-step count the app starts the checkpoint at
    start_from: str = ""  # adversarial: the reflow student whose one step is fine-tuned (its teacher is `teacher`)
    adversarial_weight: float = 0.05  # adversarial: the generator's adversarial loss beside the distillation MSE
    r1_gamma: float = 0.1  # adversarial: the discriminator's R1 penalty on real images
    discriminator_lr_scale: float = 4.0  # adversarial: the discriminator's lr as a multiple of lr (it starts from
    # scratch while the generator is only fine-tuned; the 2-D lab's discriminator learns at 3.3x its generator's)
    sample_every: int = 1000  # write a grid of EMA samples every N steps (0: never)
    save_every: int = 250
    log_every: int = 50
    seed: int = 0
    bf16: bool = False  # bf16 autocast, CUDA only (slow on CPUs without native bf16)
    compile: bool = False  # torch.compile the network for the training steps (minutes to compile; pays on a GPU)
    export_to: str = ""  # write the exported checkpoint here when training ends
    name: str = "model"
    card: str = ""

    def __post_init__(self):
        if self.network not in ("UNet", "DiT"):
            raise ValueError(f"network must be 'UNet' or 'DiT', got {self.network!r}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        nested = {"unet": UNetConfig, "dit": DiTConfig, "classifier": ClassifierConfig, "convnet": ConvNetConfig,
                  "nice": NICEConfig,
                  "objective": ObjectiveConfig}
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
