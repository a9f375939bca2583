"""The recipes of the shipped checkpoints: `python -m diffusion train --preset NAME` reproduces each."""

from __future__ import annotations

from ..models import ClassifierConfig, ConvNetConfig, DiTConfig, NICEConfig, UNetConfig
from ..core.objective import ObjectiveConfig
from .config import TrainConfig

# How the teacher is guided when it makes a student's reflow pairs (pairs --method/--scale): the guided setting that
# docs/evaluation/guided-realism found to keep class accuracy >= 0.97 at the lowest two-sample accuracy (and
# Generate's default, controls.DEFAULT_METHOD at DEFAULT_SCALES["cfg"]; a test holds the two equal).
STUDENT_GUIDANCE = dict(method="interval", scale=2.0)

# Issue 31, part 3: a teacher several times larger, for a GPU. 96 base channels (3x), two residual blocks per level,
# attention at 14x14 and 7x7: 16.5 M parameters (13.7x), the size of the Fashion-MNIST diffusion models in the
# literature (10-35 M). The recipe for that size: dropout 0.1 against memorising 60k images (Ho et al. 2020 used 0.1 on
# CIFAR-10), the flow objective with SD3's logit-normal time weighting (Esser et al. 2024: the loss weighting that won
# their comparison of rectified-flow weightings), lr 2e-4 after 1,000 warm-up steps, dropped 5x for the last fifth,
# EMA 0.9995 (a half-life of ~1,400 steps: a fifth of a GPU run of ~7k steps), batch 256, bf16 autocast and compile.
LARGE_UNET = UNetConfig(num_classes=10, self_condition=True, base_channels=96, channel_mults=(1, 2, 2),
                        blocks_per_level=2, attention_levels=(1, 2), dropout=0.1, embedding_dim=384)

PRESETS = {
    "fashion-diffusion": TrainConfig(
        run_dir="runs/fashion-diffusion", export_to="checkpoints/fashion-diffusion.safetensors",
        name="fashion-diffusion", steps=5496, batch_size=256, ema_decay=0.9995,
        # The shipped run: 9.2 min on an H200 GPU (12 steps/s, bound by the Python loop, not the GPU), stopped by
        # --max-minutes; 23 epochs. On 2 CPU cores batch 256 runs ~0.35 steps/s: ~4.4 h, resumable (--save-every).
        objective=ObjectiveConfig(schedule="vp-cosine", parameterization="v", self_condition=True, label_dropout=0.1),
        card="Class-conditional Fashion-MNIST diffusion model: VP cosine schedule, v-prediction, "
             "self-conditioning, 10% label dropout for classifier-free guidance."),
    "fashion-flow": TrainConfig(
        run_dir="runs/fashion-flow", export_to="checkpoints/fashion-flow.safetensors", name="fashion-flow",
        steps=5476, batch_size=256, ema_decay=0.9995,  # as fashion-diffusion: 9.2 min on an H200, 23 epochs
        objective=ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=True, label_dropout=0.1,
                                  time_sampling="logit-normal", uniform_fraction=0.1),
        card="Class-conditional Fashion-MNIST rectified flow: velocity prediction, logit-normal time sampling "
             "(SD3) with 10% of times drawn uniformly so that both ends are seen, self-conditioning, 10% label dropout for classifier-free guidance."),
    # Autoguidance's "bad versions" (Karras et al. 2024): the same objective as the model they guide, a quarter of
    # its width's compute (16 base channels) and a few minutes of training, so their errors are the main model's,
    # only larger. Minutes on a CPU.
    "fashion-diffusion-weak": TrainConfig(
        run_dir="runs/fashion-diffusion-weak", export_to="checkpoints/fashion-diffusion-weak.safetensors",
        name="fashion-diffusion-weak", steps=1500, sample_every=500, save_every=500,
        unet=UNetConfig(num_classes=10, self_condition=True, blocks_per_level=1, base_channels=16),
        objective=ObjectiveConfig(schedule="vp-cosine", parameterization="v", self_condition=True, label_dropout=0.1),
        card="A deliberately weak fashion-diffusion (16 base channels, 1,500 steps) for autoguidance: same "
             "schedule, v-prediction, classes and self-conditioning as fashion-diffusion. Not meant to sample alone."),
    "fashion-flow-weak": TrainConfig(
        run_dir="runs/fashion-flow-weak", export_to="checkpoints/fashion-flow-weak.safetensors",
        name="fashion-flow-weak", steps=1500, sample_every=500, save_every=500,
        unet=UNetConfig(num_classes=10, self_condition=True, blocks_per_level=1, base_channels=16),
        objective=ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=True, label_dropout=0.1,
                                  time_sampling="logit-normal", uniform_fraction=0.1),
        card="A deliberately weak fashion-flow (16 base channels, 1,500 steps) for autoguidance: same velocity "
             "objective, classes and self-conditioning as fashion-flow. Not meant to sample alone."),
    # Issue 17: the same objective as fashion-flow on a transformer. The shipped file is the CPU run of the equal-time
    # comparison (docs/evaluation/dit): 30 minutes on one core beside the UNet baseline (`--preset fashion-flow
    # --batch-size 64 --ema-decay 0.999 --max-minutes 30` on the other core), 689 steps against the UNet's 1,423.
    # Where fashion-flow was trained (9.2 min on an H200), `--batch-size 256 --ema-decay 0.9995 --max-minutes 9.2`.
    "fashion-dit": TrainConfig(
        run_dir="runs/fashion-dit", export_to="checkpoints/fashion-dit.safetensors", name="fashion-dit",
        network="DiT", dit=DiTConfig(num_classes=10, self_condition=True, width=128, depth=6, heads=4),
        steps=689, max_minutes=30.0, batch_size=64, ema_decay=0.999, sample_every=2000, save_every=1000,
        objective=ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=True, label_dropout=0.1,
                                  time_sampling="logit-normal", uniform_fraction=0.1),
        card="Class-conditional Fashion-MNIST rectified flow on a DiT (Peebles & Xie 2023) with SD3's 2-D sine-cosine "
             "positions and QK-normalisation: patch 2 (196 tokens), width 128, 6 blocks, 4 heads, adaLN-Zero "
             "conditioning on the log-SNR and class, self-conditioning, logit-normal t, 10% label dropout. Trained "
             "for 30 CPU minutes beside an equal-time UNet (docs/evaluation/dit): it lost that race at this scale."),
    # Issue 15: one reflow of fashion-flow (Liu et al. 2022). Pairs first:
    # `python -m diffusion pairs --teacher checkpoints/fashion-flow.safetensors --out runs/reflow-pairs`.
    "fashion-reflow": TrainConfig(
        task="reflow", run_dir="runs/fashion-reflow", export_to="checkpoints/fashion-reflow.safetensors",
        name="fashion-reflow", teacher="checkpoints/fashion-flow.safetensors", pairs="runs/reflow-pairs",
        # The shipped run: stopped by --max-minutes 27 at step 2,593 on 2 CPU cores (1.6 steps/s, 8.3 epochs).
        default_steps=2, hflip=False, steps=2593, batch_size=64, lr=5e-4, warmup_steps=100, ema_decay=0.999,
        sample_every=500, save_every=250,
        objective=ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=True, label_dropout=0.1,
                                  time_sampling="uniform"),
        card="A 2-rectified flow (Liu, Gong & Liu 2022): fashion-flow's network trained further on 20,000 of its own "
             "(noise, image) pairs (DPM-Solver++(2M), 12 steps, classifier-free guidance 2 baked in), so its paths are "
             "nearly straight and one to four Euler steps make an image. Sample it without guidance (the pairs carry "
             "the teacher's); 10% label dropout was kept, so CFG still works on top."),
    "fashion-instant": TrainConfig(
        task="adversarial", run_dir="runs/fashion-instant", export_to="checkpoints/fashion-instant.safetensors",
        name="fashion-instant", teacher="checkpoints/fashion-flow.safetensors", pairs="runs/reflow-pairs",
        start_from="checkpoints/fashion-reflow.safetensors",
        # The shipped run (2026-12-07): all 6,000 steps in 58.8 min on 2 CPU cores (1.7 steps/s at batch 64), on
        # the first 12,000 pairs of `pairs --out runs/reflow-pairs --steps 12 --scale 2` (the reflow student's
        # settings; 12 shards in 23 min). Resumable with --resume; --max-minutes stops early.
        default_steps=1, hflip=False, steps=6000, batch_size=64, lr=5e-5, warmup_steps=100, ema_decay=0.999,
        sample_every=500, save_every=250, adversarial_weight=0.05, r1_gamma=0.1,
        objective=ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=True, label_dropout=0.0,
                                  time_sampling="uniform"),
        card="An instant (one-step) Fashion-MNIST model: fashion-reflow's one Euler step fine-tuned by adversarial "
             "distillation (Sauer et al. 2023): towards fashion-flow's image from the same noise, plus a class-"
             "conditional projection discriminator on real training images (R1 penalty). Sample it with one Euler "
             "step, without guidance."),
    "fashion-nice": TrainConfig(
        task="normalizing-flow", run_dir="runs/fashion-nice", export_to="checkpoints/fashion-nice.safetensors",
        name="fashion-nice", steps=24_000, batch_size=128, lr=1e-3, lr_drop_at=18_000, sample_every=4000,
        save_every=1000, nice=NICEConfig(num_classes=10, couplings=4, hidden_width=512, hidden_layers=4),
        card="Class-conditional Fashion-MNIST NICE (Dinh et al. 2014): a normalizing flow with exact likelihood. "
             "4 additive couplings on alternating pixel checkerboards, each a 4 x 512-unit ReLU MLP that also sees a "
             "class embedding, then a diagonal scaling exp(s); standard Gaussian prior in pixel space, trained by "
             "maximum likelihood on uniformly dequantized pixels. Samples decode z ~ N(0, T^2 I) in one exact pass."),
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
    # Issue 31: an outsider's view. Another family (models.ConvNet: BatchNorm, ReLU, max-pooling, 1.5x the width) and
    # recipe (each image shifted by its own offset, flipped; EMA 0.995) than fashion-evaluator, so its features are not
    # the ones the project's evaluator learnt. Its name sorts after fashion-evaluator's, which stays the evaluator that
    # ModelCache.first_of_kind("evaluator") serves. The shipped run: 1,300 steps (2.8 epochs) in 34 min on 1 CPU thread
    # beside two other jobs (0.4-1.9 steps/s; about 12 min on an idle core); test accuracy 0.909.
    "fashion-second-evaluator": TrainConfig(
        task="evaluator-convnet", run_dir="runs/fashion-second-evaluator", steps=1300, batch_size=128, lr=2e-3,
        lr_drop_at=1000, warmup_steps=100, ema_decay=0.995, max_minutes=40.0, sample_every=0, save_every=100,
        export_to="checkpoints/fashion-second-evaluator.safetensors", name="fashion-second-evaluator",
        convnet=ConvNetConfig(widths=(48, 96, 192), dropout=0.3),
        card="A second clean-image Fashion-MNIST classifier, used only for evaluation (its own feature FID, precision "
             "and recall): a VGG-style network with batch normalisation, ReLU, max-pooling and a residual second "
             "convolution per stage (48, 96, 192 channels), trained with per-image random shifts of up to 2 px and "
             "horizontal flips. Another architecture and recipe than fashion-evaluator, so that a sample both call "
             "real is judged by two different sets of features. Never used for guidance or training."),
    "fashion-flow-large": TrainConfig(
        run_dir="runs/fashion-flow-large", export_to="checkpoints/fashion-flow-large.safetensors",
        name="fashion-flow-large", unet=LARGE_UNET, steps=8000, max_minutes=6.0, batch_size=256, lr=2e-4,
        warmup_steps=1000, lr_drop_at=6400, ema_decay=0.9995, sample_every=2000, save_every=1000, log_every=200,
        bf16=True, compile=True,
        objective=ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=True, label_dropout=0.1,
                                  time_sampling="logit-normal", uniform_fraction=0.1),
        card="Class-conditional Fashion-MNIST rectified flow, 16.5 M parameters (fashion-flow's recipe on a UNet of "
             "96 base channels, two blocks per level, attention at 14x14 and 7x7, dropout 0.1), trained on a GPU "
             "with bf16 autocast."),
    "fashion-reflow-large": TrainConfig(
        task="reflow", run_dir="runs/fashion-reflow-large", export_to="checkpoints/fashion-reflow-large.safetensors",
        name="fashion-reflow-large", teacher="checkpoints/fashion-flow-large.safetensors",
        pairs="runs/large-teacher/pairs", unet=LARGE_UNET, default_steps=2, hflip=False, steps=3000, max_minutes=1.5,
        batch_size=256, lr=1e-4, warmup_steps=100, ema_decay=0.999, sample_every=0, save_every=500, log_every=200,
        bf16=True, compile=True,
        objective=ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=True, label_dropout=0.1,
                                  time_sampling="uniform"),
        card="A 2-rectified flow of fashion-flow-large (Liu, Gong & Liu 2022), trained on 50,000 of the teacher's "
             "guided (noise, image) pairs; one or two Euler steps make an image. Sample it without guidance."),
}
