"""A 2-D lab with exact answers (issue 29): class-conditional Gaussian mixtures whose denoiser and noisy
log-density are closed form, tiny learned models beside them, and distances that say how far samples are.

    mixture.py    the distributions (weights, means, covariances, class of each component), exact sampling
    exact.py      E[x0 | x_t, y] and log p_t(x_t | y) in closed form; ExactNetwork, an ordinary denoiser network
    mlp.py        a tiny MLP denoiser network
    train.py      the MLP trained by the project's objective; the one-reflow student on the exact ODE's pairs
    run.py        sampling a lab model through the library's Denoiser and SAMPLERS, with paths
    metrics.py    sliced Wasserstein-2 with its noise floor, share of samples outside a class's support
    report.py     the convergence-order plot and the guidance-support table (python -m diffusion lab2d-report)
    view.py       one look at the lab for the app's tab: a LabRequest -> samples, paths, field, exact numbers
    figures.py    the tab's matplotlib pictures of a LabView
"""
