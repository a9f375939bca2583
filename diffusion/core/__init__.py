"""The math: schedules, parameterizations, the denoiser and guidance, samplers, likelihood, editing and the
sample-quality measures. Pure functions over tensors and one `denoise(x_t, t) -> (x0_hat, eps_hat)` callable;
no files, no threads, no networks' classes (a network is handed in). Imports nothing else of `diffusion`.
"""
