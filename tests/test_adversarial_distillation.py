"""Adversarial distillation on images (issue 41, item 3): the losses move only the network they belong to, and the
task trains from a reflow student on its teacher's pairs and exports a one-step denoiser (a tiny run)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image

from diffusion.formats.checkpoint import load_checkpoint
from diffusion.models.discriminator import DiscriminatorConfig, ProjectionDiscriminator
from diffusion.training import PRESETS, Trainer
from diffusion.training.adversarial import GeneratorAndDiscriminator, adversarial_distillation_loss, one_step_images
from diffusion.training.pairs import PairConfig, generate_pairs


def tiny_pair(checkpoint_dir):
    generator = load_checkpoint(checkpoint_dir / "tiny-flow.safetensors").network.train().requires_grad_(True)
    discriminator = ProjectionDiscriminator(DiscriminatorConfig(num_classes=3, image_size=8, width=4))
    return GeneratorAndDiscriminator(generator, discriminator)


def gradients(module):
    return {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()}


def test_each_loss_moves_only_its_own_network(checkpoint_dir):
    """With the adversarial weight 0 the generator's gradient is the distillation's alone; the discriminator's
    gradient does not depend on the distillation target (the generator's images reach it detached)."""
    torch.manual_seed(0)
    pair = tiny_pair(checkpoint_dir)
    noise, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    real, real_labels = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([2, 1, 0, 1])

    def run(target, weight):
        pair.zero_grad(set_to_none=True)
        adversarial_distillation_loss(pair, target, noise, labels, real, real_labels, adversarial_weight=weight,
                                      r1_gamma=0.1, self_condition=False).backward()
        return gradients(pair.generator), gradients(pair.discriminator)

    target = torch.zeros(4, 1, 8, 8)
    g_plain, d_plain = run(target, 0.0)
    pair.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(one_step_images(pair.generator, noise, labels, False), target).backward()
    g_distill = gradients(pair.generator)
    assert all(torch.allclose(g_plain[k], g_distill[k], atol=1e-6) for k in g_plain if g_plain[k] is not None)
    g_other_target, d_other_target = run(target + 0.5, 0.0)
    assert all(torch.allclose(d_plain[k], d_other_target[k]) for k in d_plain)
    g_adversarial, d_adversarial = run(target, 1.0)
    assert all(torch.allclose(d_plain[k], d_adversarial[k]) for k in d_plain)  # the generator's term spares D
    assert any(not torch.allclose(g_plain[k], g_adversarial[k]) for k in g_plain if g_plain[k] is not None)


def test_the_task_fine_tunes_a_student_and_exports_a_one_step_denoiser(checkpoint_dir, tmp_path):
    generate_pairs(PairConfig(teacher=str(checkpoint_dir / "tiny-flow.safetensors"), count=12, shard_size=6, steps=2,
                              scale=2.0, self_condition=False, batch_size=6), tmp_path / "pairs", log=lambda _: None)
    real = tmp_path / "real"
    for k, name in enumerate(("circle", "square", "cross")):  # the real images the discriminator sees
        (real / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray((torch.rand(8, 8) * 255).byte().numpy() // (k + 1)).save(real / name / f"{i}.png")
    config = replace(PRESETS["fashion-instant"], teacher=str(checkpoint_dir / "tiny-flow.safetensors"),
                     start_from=str(checkpoint_dir / "tiny-flow.safetensors"), pairs=str(tmp_path / "pairs"),
                     data=str(real), image_size=8, run_dir=str(tmp_path / "run"),
                     export_to=str(tmp_path / "run" / "instant.safetensors"), steps=3, batch_size=4, sample_every=0,
                     save_every=2, warmup_steps=1,
                     objective=replace(PRESETS["fashion-instant"].objective, self_condition=False))
    trainer = Trainer(config)
    start = {k: v.clone() for k, v in trainer.network.generator.state_dict().items()}
    trainer.train(progress=False)
    generator_group, discriminator_group = trainer.optimizer.param_groups  # D learns from scratch, faster than G
    assert discriminator_group["lr"] == pytest.approx(config.discriminator_lr_scale * generator_group["lr"])
    assert discriminator_group["lr"] > generator_group["lr"]
    assert {id(p) for p in discriminator_group["params"]} == {id(p) for p in trainer.network.discriminator.parameters()}
    moved = any(not torch.equal(start[k], v) for k, v in trainer.network.generator.state_dict().items())
    assert moved
    exported = load_checkpoint(config.export_to)
    assert exported.kind == "denoiser" and exported.schedule.name == "flow"
    assert exported.config["defaults"] == {"sampler": "ode", "solver": "euler", "steps": 1, "guidance": "none"}
    assert exported.config["adversarial"]["discriminator_lr_scale"] == config.discriminator_lr_scale  # the recipe, whole
    assert not any(name.startswith("discriminator") for name in exported.network.state_dict())
    resumed = Trainer(replace(config, steps=4, export_to=""))
    resumed.load_state()
    assert resumed.step == 3
