"""Reflow (issue 15): pair shards, the paired objective, the reflow task, and the straightness readout."""

import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from diffusion.formats.checkpoint import load_checkpoint, save_checkpoint
from diffusion.formats.data import DataError
from diffusion.core.denoiser import Denoiser
from diffusion.core.objective import ObjectiveConfig, diffusion_loss
from diffusion.core.sampling import draw_noise, image_generators
from diffusion.core.schedules import Schedule, time_grid
from diffusion.core.straightness import measure_straightness, straightness, velocity_deviation
from diffusion.training import PRESETS, Trainer
from diffusion.training.pairs import PairConfig, generate_pairs, load_pairs, shard_path
from diffusion.training import pairs as pairs_module


# --- pair shards -------------------------------------------------------------------------------
def pair_config(folder, **changes):
    return replace(PairConfig(teacher=str(folder / "tiny-flow.safetensors"), count=10, shard_size=4, steps=2,
                              scale=2.0, self_condition=False, batch_size=3), **changes)


def test_pairs_are_the_teachers_ode_solutions_with_their_metadata(checkpoint_dir, tmp_path):
    config = pair_config(checkpoint_dir)
    paths = generate_pairs(config, tmp_path / "pairs", log=lambda _: None)
    assert [p.name for p in paths] == ["pairs-00000.safetensors", "pairs-00001.safetensors", "pairs-00002.safetensors"]
    pairs = load_pairs(tmp_path / "pairs")
    assert len(pairs) == 10 and pairs.labels.tolist() == [i % 3 for i in range(10)]
    # pair i starts from the noise of image i of the seed, whatever the batch or shard size
    assert torch.equal(pairs.noise, draw_noise(image_generators(config.seed, 10), (1, 8, 8)))
    assert pairs.settings["teacher_sha256"] == load_checkpoint(config.teacher).sha256
    assert {k: pairs.settings[k] for k in ("solver", "steps", "scale")} == {"solver": "dpm++2m", "steps": 2, "scale": 2.0}
    # the images are the teacher's guided ODE solutions from that noise
    other = load_pairs_after(pair_config(checkpoint_dir, batch_size=10, shard_size=10), tmp_path / "one-shard")
    assert torch.allclose(other.images, pairs.images, atol=1e-5)


def test_pairs_can_be_guided_by_any_classifier_free_method(checkpoint_dir, tmp_path):
    from diffusion.serving.engine import SampleRequest, guidance_of
    from diffusion.core.guidance import GUIDANCE_METHODS

    for method in ("cfg-rescale", "interval", "apg"):  # the same Guidance the app and the evaluation build
        request = SampleRequest(checkpoint="tiny-flow", scale=3.0, **GUIDANCE_METHODS[method].settings)
        assert pair_config(checkpoint_dir, method=method, scale=3.0).guidance() == guidance_of(request)
    assert pair_config(checkpoint_dir, method="apg", scale=1.0).guidance().mode == "none"
    with pytest.raises(ValueError, match="method must be one of"):
        pair_config(checkpoint_dir, method="autoguidance")
    plain = load_pairs_after(pair_config(checkpoint_dir, count=4), tmp_path / "cfg")
    apg = load_pairs_after(pair_config(checkpoint_dir, count=4, method="apg"), tmp_path / "apg")
    assert "method" not in plain.settings and apg.settings["method"] == "apg"  # plain CFG shards read as before
    assert torch.equal(apg.noise, plain.noise) and not torch.allclose(apg.images, plain.images)
    with pytest.raises(DataError, match="other settings"):  # one folder, one method
        generate_pairs(pair_config(checkpoint_dir, count=4, method="apg"), tmp_path / "cfg", log=lambda _: None)


def load_pairs_after(config, folder):
    generate_pairs(config, folder, log=lambda _: None)
    return load_pairs(folder)


def test_pair_generation_resumes_after_a_kill_and_makes_the_same_pairs(checkpoint_dir, tmp_path, monkeypatch):
    config = pair_config(checkpoint_dir)
    whole = load_pairs_after(config, tmp_path / "whole")

    real_sample_ode, calls = pairs_module.sample_ode, []

    def dies_on_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill in the middle of the second shard
        return real_sample_ode(*args, **kwargs)

    monkeypatch.setattr(pairs_module, "sample_ode", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        generate_pairs(config, tmp_path / "killed", log=lambda _: None)
    assert shard_path(tmp_path / "killed", 0).exists() and not shard_path(tmp_path / "killed", 1).exists()
    assert not list((tmp_path / "killed").glob(".*tmp"))  # no half-written shard is left behind
    first_shard_time = shard_path(tmp_path / "killed", 0).stat().st_mtime_ns

    monkeypatch.setattr(pairs_module, "sample_ode", real_sample_ode)
    resumed = load_pairs_after(config, tmp_path / "killed")
    assert shard_path(tmp_path / "killed", 0).stat().st_mtime_ns == first_shard_time  # not redone
    for name in ("noise", "images", "labels"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name))


def test_pair_folders_refuse_mixed_or_broken_shards(checkpoint_dir, tmp_path):
    folder = tmp_path / "pairs"
    generate_pairs(pair_config(checkpoint_dir), folder, log=lambda _: None)
    with pytest.raises(DataError, match="other settings"):
        generate_pairs(pair_config(checkpoint_dir, scale=3.0), folder, log=lambda _: None)
    shard_path(folder, 1).unlink()
    with pytest.raises(DataError, match="a shard is missing"):
        load_pairs(folder)
    save_file({"x": torch.zeros(2)}, str(shard_path(folder, 1)), metadata={"format": "something else"})
    with pytest.raises(DataError, match="not a reflow pair shard"):
        load_pairs(folder)
    shard_path(folder, 1).write_bytes(b"\x00" * 5)
    with pytest.raises(DataError, match="not a readable pair shard"):
        load_pairs(folder)
    with pytest.raises(DataError, match="no reflow pair shards"):
        load_pairs(tmp_path / "empty")


def test_the_two_parts_of_a_split_run_make_the_whole(checkpoint_dir, tmp_path):
    config = pair_config(checkpoint_dir)
    for part in ((0, 2), (1, 2)):
        generate_pairs(config, tmp_path / "split", log=lambda _: None, part=part)
    whole = load_pairs_after(config, tmp_path / "whole")
    assert torch.equal(load_pairs(tmp_path / "split").images, whole.images)


# --- the paired objective ----------------------------------------------------------------------
class Affine(nn.Module):
    """A network whose flow prediction is a fixed tensor: the loss can be written by hand."""

    def __init__(self, output):
        super().__init__()
        self.output = output
        self.config = type("Config", (), {"null_class": None, "num_classes": 0, "self_condition": False})()

    def forward(self, x, log_snr, labels=None, x0_previous=None):
        return self.output.expand_as(x)


def test_the_reflow_loss_regresses_z_minus_x_on_the_pairs_line():
    x, z = torch.full((4, 1, 2, 2), 0.3), torch.full((4, 1, 2, 2), -1.2)
    objective = ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=False, label_dropout=0.0)
    exact = diffusion_loss(Affine(z - x), x, None, objective, noise=z)
    assert float(exact) == pytest.approx(0.0, abs=1e-12)
    off = diffusion_loss(Affine(z - x + 0.5), x, None, objective, noise=z)
    assert float(off) == pytest.approx(0.25, rel=1e-6)


# --- straightness -------------------------------------------------------------------------------
def test_straightness_is_zero_for_a_straight_field_and_a_hand_sum_for_a_curved_one():
    s = torch.tensor([1.0, 0.75, 0.0], dtype=torch.float64)
    z, x = torch.full((1, 1, 1, 2), 1.0), torch.full((1, 1, 1, 2), -1.0)  # z - x = 2 everywhere
    straight = (z - x).expand(2, 1, 1, 1, 2)
    assert float(straightness(s, straight, z, x)) == 0.0
    curved = torch.stack([torch.full((1, 1, 1, 2), 3.0), torch.tensor([[[[1.0, 2.0]]]])])
    # 0.25 * mean((3-2)^2, (3-2)^2) + 0.75 * mean((1-2)^2, (2-2)^2) = 0.25 + 0.375
    assert float(straightness(s, curved, z, x)) == pytest.approx(0.625)
    assert velocity_deviation(curved, z, x)[:, 0].tolist() == pytest.approx([1.0, math.sqrt(0.5)])


def gaussian_flow_denoiser(mean, std):
    """Exact (x0_hat, eps_hat) of rectified-flow noising of data N(mean, diag(std^2)): the 1-rectified flow."""
    schedule = Schedule("flow")

    def denoise(x_t, t):
        alpha, sigma = 1 - t, t
        var = alpha**2 * std**2 + sigma**2
        eps = sigma / var * (x_t - alpha * mean)
        x0 = mean + alpha * std**2 / var * (x_t - alpha * mean)
        return x0, eps

    return denoise, schedule


def test_straightness_of_the_exact_gaussian_flow_matches_its_closed_form():
    # 1-D data N(0, c^2): the ODE path from z is x_t = sqrt((1 - t)^2 c^2 + t^2) z, so with z - x = (1 - c) z,
    # S = E[z^2] * integral_0^1 ((t - (1 - t) c^2) / sqrt((1 - t)^2 c^2 + t^2) - (1 - c))^2 dt.
    c = 0.25
    t = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    integrand = ((t - (1 - t) * c**2) / ((1 - t) ** 2 * c**2 + t**2).sqrt() - (1 - c)) ** 2
    closed_form = float(torch.trapezoid(integrand, t))
    denoise, schedule = gaussian_flow_denoiser(torch.zeros(1, 1, 1, 1, dtype=torch.float64), c)
    z = draw_noise(image_generators(0, 20_000), (1, 1, 1)).double()
    readout = measure_straightness(denoise, z, time_grid(schedule, 1000), schedule)
    empirical = float((readout.per_image.double()).mean() / z.pow(2).mean())  # per unit E[z^2]
    assert closed_form > 0.05
    assert empirical == pytest.approx(closed_form, rel=0.02)


class TinyVelocity(nn.Module):
    """A small MLP flow network for 2-D points stored as (B, 2, 1, 1) images."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"null_class": None, "num_classes": 0, "self_condition": False})()
        self.net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

    def forward(self, x, log_snr, labels=None, x0_previous=None):
        t = torch.sigmoid(-log_snr / 2)  # flow schedule: log-SNR = 2 log((1 - t) / t)
        scale = ((1 - t) ** 2 + t**2).sqrt()[:, None]  # undo the unit-variance input scaling
        return self.net(torch.cat([x.flatten(1) * scale, t[:, None]], 1)).view_as(x)


def train_velocity(x, z, paired: bool, steps=1500, seed=0):
    torch.manual_seed(seed)
    network = TinyVelocity()
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    objective = ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=False, label_dropout=0.0)
    for step in range(steps):
        rows = torch.randint(0, len(x), (256,))
        loss = diffusion_loss(network, x[rows], None, objective, noise=z[rows] if paired else None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network.eval()


def test_one_reflow_straightens_the_paths_of_an_exact_teacher():
    """Gaussian to Gaussian (Liu et al. 2022's own toy setting): the exact 1-rectified flow curves; trained on its
    (z, T(z)) pairs the student's paths are nearly straight, and the same network trained on independent (z, x)
    draws (no reflow) is not."""
    mean = torch.tensor([2.0, -1.0], dtype=torch.float64).view(1, 2, 1, 1)
    std = torch.tensor([0.3, 1.5], dtype=torch.float64).view(1, 2, 1, 1)
    teacher, schedule = gaussian_flow_denoiser(mean, std)
    grid = time_grid(schedule, 100)
    z_train = draw_noise(image_generators(1, 4000), (2, 1, 1)).double()
    x_train = measure_straightness(teacher, z_train, grid, schedule).images  # the teacher's pairs x = T(z)
    z_test = draw_noise(image_generators(2, 1000), (2, 1, 1)).double()
    teacher_s = measure_straightness(teacher, z_test, grid, schedule).mean

    def student_s(paired):
        network = train_velocity(x_train.float(), z_train.float(), paired)
        denoise = Denoiser(network, schedule, "flow")
        with torch.no_grad():
            return measure_straightness(denoise, z_test.float(), grid, schedule).mean

    reflowed, independent = student_s(True), student_s(False)
    assert teacher_s > 0.1
    assert reflowed < teacher_s / 10
    assert independent > teacher_s / 3  # what straightens is the pairing, not the retraining


# --- the reflow task ---------------------------------------------------------------------------
def reflow_config(checkpoint_dir, tmp_path, **changes):
    base = PRESETS["fashion-reflow"]
    # Every path the preset writes is moved under tmp_path: its export_to is the shipped checkpoint (a test once
    # overwrote checkpoints/fashion-reflow.safetensors through it).
    fields = dict(teacher=str(checkpoint_dir / "tiny-flow.safetensors"), pairs=str(tmp_path / "pairs"),
                  run_dir=str(tmp_path / "run"), export_to=str(tmp_path / "run" / "export.safetensors"), image_size=8, steps=6, batch_size=4, sample_every=0, save_every=3,
                  warmup_steps=1, objective=replace(base.objective, self_condition=False))
    return replace(base, **fields | changes)


def test_reflow_trains_from_the_teacher_and_exports_a_few_step_denoiser(checkpoint_dir, tmp_path):
    generate_pairs(pair_config(checkpoint_dir, count=12), tmp_path / "pairs", log=lambda _: None)
    config = reflow_config(checkpoint_dir, tmp_path)
    trainer = Trainer(config)
    teacher = load_checkpoint(config.teacher).network
    for name, value in teacher.state_dict().items():
        assert torch.equal(trainer.network.state_dict()[name], value)  # starts from the teacher's weights
    x, z, y = trainer.batch_for_step(0)
    assert x.shape == z.shape == (4, 1, 8, 8) and y.shape == (4,)
    trainer.train(progress=False)
    student = trainer.export(tmp_path / "student.safetensors")
    loaded = load_checkpoint(student)
    assert loaded.kind == "denoiser" and loaded.schedule.name == "flow"
    assert loaded.config["defaults"] == {"sampler": "ode", "solver": "euler", "steps": 2, "guidance": "none"}
    assert loaded.config["reflow"]["teacher_sha256"] == load_checkpoint(config.teacher).sha256
    assert loaded.config["reflow"]["pairs"] == 12


def test_reflow_refuses_pairs_of_another_teacher_and_flipped_pairs(checkpoint_dir, tmp_path):
    generate_pairs(pair_config(checkpoint_dir), tmp_path / "pairs", log=lambda _: None)
    other = tmp_path / "other-teacher.safetensors"
    teacher = load_checkpoint(checkpoint_dir / "tiny-flow.safetensors")
    save_checkpoint(other, "denoiser", teacher.network, teacher.config, teacher.training, "Another card, other bytes.")
    with pytest.raises(DataError, match="another teacher"):
        Trainer(reflow_config(checkpoint_dir, tmp_path, teacher=str(other)))
    with pytest.raises(ValueError, match="must not be flipped"):
        Trainer(reflow_config(checkpoint_dir, tmp_path, hflip=True))
    with pytest.raises(ValueError, match="not a rectified flow"):
        Trainer(reflow_config(checkpoint_dir, tmp_path, teacher=str(checkpoint_dir / "tiny.safetensors")))


def gaussian_denoiser(schedule: Schedule, std: float):
    """Exact (x0_hat, eps_hat) for data N(0, std^2) under any schedule."""

    def denoise(x_t, t):
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        var = alpha**2 * std**2 + sigma**2
        return alpha * std**2 / var * x_t, sigma / var * x_t

    return denoise


def test_a_diffusion_model_is_read_through_its_flow_equivalent_velocity():
    """VP and rectified-flow noising of the same data have the same paths in y = x / (alpha + sigma), s = sigma /
    (alpha + sigma), so the exact VP and flow denoisers of one Gaussian have the same straightness."""
    z = draw_noise(image_generators(0, 5000), (1, 1, 1)).double()
    readings = {}
    for name in ("flow", "vp-cosine"):
        schedule = Schedule(name)
        grid = time_grid(schedule, 400, "log-snr") if name == "vp-cosine" else time_grid(schedule, 400)
        readings[name] = measure_straightness(gaussian_denoiser(schedule, 0.25), z, grid, schedule)
    assert readings["flow"].mean > 0.05
    assert readings["vp-cosine"].mean == pytest.approx(readings["flow"].mean, rel=0.03)
    assert torch.allclose(readings["vp-cosine"].images, readings["flow"].images, atol=2e-2)
