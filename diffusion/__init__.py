"""diffusion-playground: schedules, networks, samplers, guidance and checkpoints for diffusion and flow models.

Module map (each imports only what is below it): engine -> sampling -> denoiser -> networks, schedules;
checkpoint (the only reader of model files); training; data; images (pixels out); evaluation; benchmark.
"""
