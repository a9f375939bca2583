"""diffusers pipeline folders (a UNet2DModel and a DDPM-style scheduler) read as this project's models.

    FOLDER/model_index.json                                  which pipeline (DDPMPipeline, DDIMPipeline)
    FOLDER/unet/config.json                                  UNet2DModel's constructor arguments
    FOLDER/unet/diffusion_pytorch_model.safetensors          the weights: safetensors only, never a pickle
    FOLDER/scheduler/scheduler_config.json                   betas, prediction type, clipping

The scheduler config becomes our math: the betas a vp-discrete schedule (diffusers' timestep k is t = (k+1)/N),
`prediction_type` a parameterization, and the UNet is wrapped by models.DiffusersUNet2D, which turns our
(x_t, log-SNR) call into its (x_t, k) call. Folders are untrusted input like our files: every problem is a
CheckpointError naming the file and what is wrong. diffusers itself is needed only to build the network.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.schedules import DiscreteBetas, Schedule
from ..models.diffusers_unet import DiffusersUNetConfig
from .jsonsafe import load_json
from .model_build import (LoadedModel, ModelSource, build_loaded_model, check_fits, config_metadata, describe_model,
                          file_sha256)
from .safetensors_container import CheckpointError, read_header

MODEL_INDEX, UNET_CONFIG, SCHEDULER_CONFIG = "model_index.json", "unet/config.json", "scheduler/scheduler_config.json"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
PICKLED_WEIGHTS = ("unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.pt", "unet/pytorch_model.bin")
PIPELINES = ("DDPMPipeline", "DDIMPipeline")
# Schedulers whose config is a DDPM-style discrete beta schedule (the sampler it names does not matter: ours run).
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
              "UniPCMultistepScheduler", "DEISMultistepScheduler")
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
MAX_JSON_BYTES = 1 << 20
CONVERT_HINT = ("it has only pickled weights ({found}), which are never opened here. If you trust the file, convert it "
                "once in Python: UNet2DModel.from_pretrained(FOLDER, subfolder='unet').save_pretrained(FOLDER + "
                "'/unet', safe_serialization=True)")


def is_diffusers_folder(path: Path) -> bool:
    """A folder that looks like a diffusers pipeline (whether or not it is a valid one)."""
    return path.is_dir() and ((path / MODEL_INDEX).exists() or (path / UNET_CONFIG).exists())


def folder_signature(path: Path) -> tuple:
    """Identity of a folder's version: (mtime, size, inode) of every file it is read from."""
    signature = []
    for name in (MODEL_INDEX, UNET_CONFIG, SCHEDULER_CONFIG, WEIGHTS):
        try:
            info = os.lstat(path / name)
            signature.append((name, info.st_mtime_ns, info.st_size, info.st_ino))
        except OSError:
            signature.append((name, None))
    return tuple(signature)


@dataclass(frozen=True)
class DiffusersFolder:
    """What a valid folder says, before any tensor is read."""

    path: Path
    pipeline: str
    scheduler: str
    network_config: DiffusersUNetConfig
    schedule: Schedule
    parameterization: str
    clip_sample: bool
    class_names: tuple[str, ...]

    @property
    def config(self) -> dict:
        """Our `config` metadata for this model (what load_checkpoint would read from a converted file)."""
        config = config_metadata("denoiser", "DiffusersUNet2D", self.network_config, class_names=self.class_names,
                                 schedule=self.schedule.to_config(), parameterization=self.parameterization)
        return config | {"clip_x0": self.clip_sample, "source": {"format": "diffusers", "pipeline": self.pipeline,
                                                                   "scheduler": self.scheduler}}

    @property
    def card(self) -> str:
        u, betas = self.network_config.unet, self.schedule.betas
        size, channels = self.network_config.image_size, self.network_config.image_channels
        classes = (f"class-conditional ({len(self.class_names)} classes"
                   f"{', null class for CFG' if self.network_config.null_class is not None else ', no null class'})"
                   if self.class_names else "unconditional")
        return (f"diffusers {self.pipeline} folder '{self.path.name}': a UNet2DModel (block_out_channels "
                f"{list(u.get('block_out_channels', []))}), {classes}, {size}x{size} px {'colour' if channels == 3 else 'grey'}. "
                f"Trained by its authors with {self.scheduler}: {betas.steps} {betas.kind} betas, predicting "
                f"{self.parameterization}{', x0 clipped to [-1, 1]' if self.clip_sample else ''}. Sampled here by this "
                f"project's samplers through its vp-discrete schedule.")


def read_folder(path, class_names: tuple[str, ...] | None = None, null_class: int | None = None) -> DiffusersFolder:
    """Parse and check a folder's JSON files and the presence of safetensors weights; reads no tensors."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path.name}: not a folder")
    index = _read_json(path, MODEL_INDEX, required=False) or {}
    pipeline = index.get("_class_name", "DDPMPipeline")
    if not isinstance(pipeline, str) or pipeline not in PIPELINES:
        raise CheckpointError(f"{path.name}/{MODEL_INDEX}: pipeline {str(pipeline)[:60]!r} is not supported "
                              f"(expected one of {', '.join(PIPELINES)}: a UNet2DModel with a DDPM-style scheduler)")
    unet = _read_json(path, UNET_CONFIG)
    unet_class = unet.get("_class_name", "UNet2DModel")
    if not isinstance(unet_class, str) or unet_class != "UNet2DModel":
        raise CheckpointError(f"{path.name}/{UNET_CONFIG}: network {str(unet_class)[:60]!r} is not supported (expected UNet2DModel)")
    scheduler = _read_json(path, SCHEDULER_CONFIG)
    betas, scheduler_name, parameterization, clip = _map_scheduler(path, scheduler)
    embeds = unet.get("num_class_embeds") or 0
    try:
        network_config = DiffusersUNetConfig(unet=unet, betas=betas.to_dict(), null_class=null_class)
    except ValueError as error:
        raise CheckpointError(f"{path.name}/{UNET_CONFIG}: {error}") from error
    count = network_config.num_classes
    names = tuple(class_names) if class_names else tuple(f"class {i}" for i in range(count))
    if len(names) != count:
        raise CheckpointError(f"{path.name}: {len(names)} class names for {count} classes "
                              f"({embeds} class embeddings{', one of them the null class' if null_class is not None else ''})")
    _weights_path(path)  # present and not a pickle
    return DiffusersFolder(path, pipeline, scheduler_name, network_config, Schedule("vp-discrete", betas),
                           parameterization, clip, names)


def check_folder(path) -> dict:
    """What the checkpoint listing needs (kind, card), after checking the weights' tensor table against the
    network built on the meta device; no tensor data is read."""
    folder = read_folder(path)
    with _named(folder.path):
        header, data_size, _ = read_header(_weights_path(folder.path))
        check_fits(_source(folder, header, data_size))
    return {"kind": "denoiser", "card": folder.card, "config": folder.config}


def load_folder(path, device="cpu") -> LoadedModel:
    """The folder as a LoadedModel: the weights file is read once (tensors and SHA-256 from the same bytes)."""
    folder = read_folder(path)
    with _named(folder.path):
        header, data_size, data = read_header(_weights_path(folder.path), whole=True)
        return build_loaded_model(_source(folder, header, data_size, data), device)


def describe_folder(path) -> LoadedModel:
    """The folder as a LoadedModel from its configs and the weights' header (model_build.describe_model)."""
    folder = read_folder(path)
    with _named(folder.path):
        weights = _weights_path(folder.path)
        header, data_size, _ = read_header(weights)
        return describe_model(_source(folder, header, data_size), file_sha256(weights))


def _source(folder: DiffusersFolder, header: dict, data_size: int, data: bytes = b"") -> ModelSource:
    """The folder for model_build: its weights are those of the adapter's `unet` submodule."""
    training = {"source": str(folder.path.name), "pipeline": folder.pipeline, "scheduler": folder.scheduler}
    return ModelSource("denoiser", folder.config, training, folder.card, folder.path, Path(WEIGHTS), header,
                       data_size, data, weights_of="unet")


# --- private ------------------------------------------------------------------------------------
def _read_json(folder: Path, name: str, required: bool = True) -> dict | None:
    path = folder / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if required:
            raise CheckpointError(f"{folder.name}: missing {name}") from None
        return None
    except OSError as error:
        raise CheckpointError(f"{folder.name}/{name}: cannot read ({error.strerror})") from error
    if stat.S_ISLNK(info.st_mode):
        raise CheckpointError(f"{folder.name}/{name}: a symbolic link, not followed (copy the folder with cp -rL)")
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_JSON_BYTES:
        raise CheckpointError(f"{folder.name}/{name}: not a regular JSON file of at most {MAX_JSON_BYTES} bytes")
    try:
        value = load_json(path.read_bytes(), f"{folder.name}/{name}")
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    except OSError as error:
        raise CheckpointError(f"{folder.name}/{name}: cannot read ({error.strerror})") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{folder.name}/{name}: not a JSON object")
    return value


def _map_scheduler(folder: Path, config: dict) -> tuple[DiscreteBetas, str, str, bool]:
    """(betas, scheduler class, parameterization, clip x0) from scheduler_config.json."""
    where = f"{folder.name}/{SCHEDULER_CONFIG}"
    name = config.get("_class_name", "DDPMScheduler")
    if not isinstance(name, str) or name not in SCHEDULERS:
        raise CheckpointError(f"{where}: scheduler {str(name)[:60]!r} is not supported (expected a DDPM-style "
                              f"discrete-beta scheduler: {', '.join(SCHEDULERS)})")
    prediction = config.get("prediction_type", "epsilon")
    if not isinstance(prediction, str) or prediction not in PREDICTION_TYPES:
        raise CheckpointError(f"{where}: prediction_type {str(prediction)[:60]!r} is not supported "
                              f"(expected one of {', '.join(PREDICTION_TYPES)})")
    if config.get("rescale_betas_zero_snr"):
        raise CheckpointError(f"{where}: rescale_betas_zero_snr (zero terminal SNR) is not supported")
    if config.get("thresholding"):
        raise CheckpointError(f"{where}: dynamic thresholding is not supported; set thresholding to false")
    trained = config.get("trained_betas")
    kind = "table" if trained is not None else config.get("beta_schedule", "linear")
    try:
        steps = config.get("num_train_timesteps", 1000)
        betas = DiscreteBetas.from_dict({
            "kind": kind, "start": config.get("beta_start", 1e-4), "end": config.get("beta_end", 0.02),
            "steps": steps, "table": trained if trained is not None else [],
            "steps_offset": config.get("steps_offset", 0)})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: {error}") from error
    clip = config.get("clip_sample", True)
    if not isinstance(clip, bool):
        raise CheckpointError(f"{where}: clip_sample must be true or false")
    if clip and not (config.get("clip_sample_range", 1.0) == 1.0 and not isinstance(config.get("clip_sample_range"), bool)):
        raise CheckpointError(f"{where}: clip_sample_range other than 1.0 is not supported")
    return betas, name, PREDICTION_TYPES[prediction], clip


def _weights_path(folder: Path) -> Path:
    path = folder / WEIGHTS
    if os.path.lexists(path):
        return path
    pickled = [name for name in PICKLED_WEIGHTS if os.path.lexists(folder / name)]
    if pickled:
        raise CheckpointError(f"{folder.name}: {CONVERT_HINT.format(found=', '.join(pickled))}")
    raise CheckpointError(f"{folder.name}: missing {WEIGHTS}")


@contextmanager
def _named(folder: Path):
    """Errors about a file inside the folder name the folder: 'FOLDER/unet/FILE: ...'."""
    try:
        yield
    except CheckpointError as error:
        message = str(error)
        if message.startswith(folder.name + ":") or message.startswith(folder.name + "/"):
            raise
        raise CheckpointError(f"{folder.name}/unet/{message}") from error
