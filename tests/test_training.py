import gzip
import json
import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY_CLASSIFIER, TINY_UNET
from diffusion.formats.checkpoint import load_checkpoint
from diffusion.formats.data import DataError, ImageDataset, load_fashion_mnist, load_image_folder, read_idx
from diffusion.core.objective import ObjectiveConfig
from diffusion.training import TrainConfig, Trainer, weights_digest

ROOT = Path(__file__).resolve().parents[1]


def shapes_dataset(n=48) -> ImageDataset:
    """Three classes of 8x8 pictures: a bright left half, a bright top half, a bright diagonal."""
    images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    labels = torch.arange(n) % 3
    for i, label in enumerate(labels.tolist()):
        if label == 0:
            images[i, :, :, :4] = 255
        elif label == 1:
            images[i, :, :4, :] = 255
        else:
            images[i, 0] = torch.eye(8, dtype=torch.uint8) * 255
    return ImageDataset(images, labels, ("left", "top", "diagonal"))


def tiny_config(tmp_path, **changes) -> TrainConfig:
    config = TrainConfig(run_dir=str(tmp_path / "run"), data="shapes", image_size=8, batch_size=8, steps=20, lr=3e-3,
                         warmup_steps=1, unet=TINY_UNET, classifier=TINY_CLASSIFIER, sample_every=0, save_every=5,
                         log_every=5, ema_decay=0.9, hflip=False,
                         objective=ObjectiveConfig(schedule="vp-cosine", parameterization="v", self_condition=True))
    return replace(config, **changes)


def fixed_loss(trainer, images, labels):
    torch.manual_seed(123)
    with torch.no_grad():
        return sum(float(trainer.loss(images, labels)) for _ in range(20)) / 20


def test_training_lowers_the_loss_and_ema_lags(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, steps=60), dataset=shapes_dataset())
    images, labels = trainer.batch_for_step(0)
    before = fixed_loss(trainer, images, labels)
    trainer.train(progress=False)
    after = fixed_loss(trainer, images, labels)
    assert after < 0.7 * before, (before, after)
    online, ema = trainer.network.state_dict(), trainer.ema.ema_model.state_dict()
    assert any(not torch.equal(online[k], ema[k]) for k in online)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(5, 61, 5))


def plain_loop_losses(trainer, steps: int) -> list[float]:
    """The loop as it was before issue 30: CPU batches moved per step, the loss read after every step, the EMA
    updated one parameter at a time."""
    from diffusion.training.trainer import learning_rate

    c, trainer.ema.use_foreach, losses = trainer.config, False, []
    indices = torch.tensor(list(trainer.sampler))
    for step in range(steps):
        for group in trainer.optimizer.param_groups:
            group["lr"] = group.get("lr_scale", 1.0) * learning_rate(c, step)
        batch = shapes_dataset().batch(indices[step * c.batch_size:(step + 1) * c.batch_size], "cpu")
        loss = trainer.loss(*batch)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), c.grad_clip)
        trainer.optimizer.step()
        trainer.ema.update()
        losses.append(loss.item())
    return losses


def test_the_loop_without_host_syncs_trains_exactly_as_the_plain_loop(tmp_path):
    """Issue 30, item 3: data on the device, losses summed there and read once per log interval, a foreach EMA: the
    same weights, EMA and losses as the plain loop, and the log gives each interval's mean loss and steps/s."""
    trainer = Trainer(tiny_config(tmp_path / "a", steps=6, log_every=3), dataset=shapes_dataset())
    trainer.train(progress=False)
    plain = Trainer(tiny_config(tmp_path / "b", steps=6, log_every=3), dataset=shapes_dataset())
    losses = plain_loop_losses(plain, 6)
    assert weights_digest(trainer.network) == weights_digest(plain.network)
    assert weights_digest(trainer.ema.ema_model) == weights_digest(plain.ema.ema_model)
    log = [json.loads(line) for line in (tmp_path / "a" / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6]
    assert [r["loss"] for r in log] == pytest.approx([sum(losses[:3]) / 3, sum(losses[3:]) / 3], rel=1e-6)
    assert all(r["steps_per_s"] > 0 for r in log)


@pytest.mark.compile
def test_a_compiled_network_trains_as_the_eager_one(tmp_path):
    eager = Trainer(tiny_config(tmp_path / "a", steps=3, log_every=1), dataset=shapes_dataset())
    eager.train(progress=False)
    compiled = Trainer(tiny_config(tmp_path / "b", steps=3, log_every=1, compile=True), dataset=shapes_dataset())
    compiled.train(progress=False)
    read = lambda run: [json.loads(line)["loss"] for line in (tmp_path / run / "run" / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert read("b") == pytest.approx(read("a"), rel=1e-4)


def test_state_round_trip_and_resume_continue_exactly(tmp_path):
    straight = Trainer(tiny_config(tmp_path / "a", steps=10), dataset=shapes_dataset())
    straight.train(progress=False)

    first = Trainer(tiny_config(tmp_path / "b", steps=5), dataset=shapes_dataset())
    first.train(progress=False)
    resumed = Trainer(tiny_config(tmp_path / "b", steps=10), dataset=shapes_dataset())
    resumed.load_state()
    assert resumed.step == 5
    assert weights_digest(resumed.network) == weights_digest(first.network)
    assert weights_digest(resumed.ema.ema_model) == weights_digest(first.ema.ema_model)
    resumed.train(progress=False)
    assert resumed.step == 10
    assert weights_digest(resumed.network) == weights_digest(straight.network)
    assert weights_digest(resumed.ema.ema_model) == weights_digest(straight.ema.ema_model)


def test_export_writes_the_ema_weights(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, steps=3), dataset=shapes_dataset())
    trainer.train(progress=False)
    path = trainer.export(tmp_path / "out.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.kind == "denoiser" and loaded.class_names == ("left", "top", "diagonal")
    assert loaded.training["steps"] == 3 and "python -m diffusion train" in loaded.training["command"]
    assert weights_digest(loaded.network) == weights_digest(trainer.ema.ema_model)


@pytest.mark.parametrize("task", ["noisy-classifier", "evaluator"])
def test_classifiers_train_and_export(tmp_path, task):
    trainer = Trainer(tiny_config(tmp_path, task=task, steps=30), dataset=shapes_dataset())
    images, labels = trainer.batch_for_step(0)
    before = fixed_loss(trainer, images, labels)
    trainer.train(progress=False)
    assert fixed_loss(trainer, images, labels) < before
    loaded = load_checkpoint(trainer.export(tmp_path / "c.safetensors"))
    assert loaded.kind == task and loaded.network.config.noise_conditioned == (task == "noisy-classifier")


def write_idx(path, array: torch.Tensor):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.numpy().tobytes())


def test_idx_reader_and_fashion_loader(tmp_path):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([3, 1, 4, 1, 5], dtype=torch.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    assert torch.equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    data = load_fashion_mnist("test", tmp_path)
    assert data.images.shape == (5, 1, 28, 28) and data.labels.tolist() == [3, 1, 4, 1, 5]
    assert data.class_names[9] == "Ankle boot"
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09abc"))
    with pytest.raises(DataError, match="expected 9 values"):
        read_idx(tmp_path / "bad.gz")


def write_image_folder(root: Path, per_class=8):
    for name, pattern in [("left", (slice(None), slice(0, 4))), ("top", (slice(0, 4), slice(None)))]:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.zeros(8, 8, dtype=torch.uint8)
            pixels[pattern] = 200 + i
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")
    (root / "left" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_loader(tmp_path):
    data = load_image_folder(write_image_folder(tmp_path / "imgs"), image_size=8)
    assert data.class_names == ("left", "top") and data.images.shape == (16, 1, 8, 8)
    assert data.labels.tolist() == [0] * 8 + [1] * 8
    assert int(data.images[0, 0, 0, 0]) == 200 and int(data.images[0, 0, 0, 7]) == 0
    with pytest.raises(DataError, match="no class subfolders"):
        load_image_folder(tmp_path / "imgs" / "left", image_size=8)


def test_two_process_ddp_ranks_end_identical(tmp_path):
    folder = write_image_folder(tmp_path / "imgs")
    config = tiny_config(tmp_path, data=str(folder), steps=4, batch_size=4, save_every=2)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "diffusion", "train", "--config", str(config_file)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = Path(config.run_dir)
    digests = [(run / f"digest-rank{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    from safetensors.torch import load_file

    saved = load_file(run / "state.safetensors")
    assert not torch.equal(saved["rng.torch.rank0"], saved["rng.torch.rank1"])  # each rank draws its own noise
    state = Trainer(replace(config, steps=4), dataset=load_image_folder(folder, 8))
    state.load_state()
    assert state.step == 4
    assert state.world == 1 and weights_digest(state.network) == digests[0]


def test_learning_rate_warms_up_linearly_then_drops():
    from diffusion.training.trainer import learning_rate

    config = TrainConfig(lr=1e-3, warmup_steps=4, lr_drop_at=10, lr_drop_factor=0.2)
    rates = [learning_rate(config, step) for step in (0, 1, 3, 9, 10, 50)]
    assert rates == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3, 2e-4, 2e-4])
    assert learning_rate(replace(config, lr_drop_at=0), 50) == pytest.approx(1e-3)


def test_a_dit_denoiser_trains_lowers_its_loss_and_exports(tmp_path):
    from diffusion.models import DiTConfig

    dit = DiTConfig(width=32, depth=2, heads=2, num_classes=3, self_condition=True, embedding_dim=16)
    config = tiny_config(tmp_path, network="DiT", dit=dit, steps=60, export_to=str(tmp_path / "dit.safetensors"))
    trainer = Trainer(config, dataset=shapes_dataset())
    images, labels = trainer.batch_for_step(0)
    before = fixed_loss(trainer, images, labels)
    trainer.train(progress=False)
    assert fixed_loss(trainer, images, labels) < 0.7 * before
    loaded = load_checkpoint(tmp_path / "dit.safetensors")
    assert loaded.config["network"] == "DiT" and loaded.config["network_config"]["image_size"] == 8
    assert loaded.self_condition and loaded.config["null_class"] == 3
