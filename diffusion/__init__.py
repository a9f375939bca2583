"""diffusion-playground: schedules, networks, samplers, guidance and checkpoints for diffusion and flow models,
and normalizing flows with exact likelihood.

Module map (each imports only what is below it): app (Gradio) -> studies -> engine -> sampling -> denoiser ->
models (one registry), schedules; checkpoint (the only reader of model files); training (a task object per
checkpoint kind); likelihood (dequantization, bits/dim); data; images (pixels out); evaluation; benchmark.
"""
