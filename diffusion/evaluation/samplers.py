"""The samplers part: feature FID, accuracy and diversity per sampler and NFE, without guidance."""

from __future__ import annotations

from .part import Part

SAMPLER_COLOURS = {"ddpm": "tab:blue", "ddim": "tab:orange", "ode euler": "tab:green", "ode heun": "tab:red",
                   "ode dpm++2m": "tab:purple"}


def sampler_grid(quick: bool) -> list[dict]:
    """The sampler table: DDPM 1000/250/100, DDIM 10/20/50/100, ODE (Euler, Heun, DPM++2M) at ~10/20/50 NFE."""
    if quick:
        return [dict(sampler="ddpm", steps=4), dict(sampler="ddim", steps=4), dict(sampler="ode", solver="heun", steps=3)]
    rows = [dict(sampler="ddpm", steps=s) for s in (1000, 250, 100)]
    rows += [dict(sampler="ddim", steps=s) for s in (10, 20, 50, 100)]
    rows += [dict(sampler="ode", solver="euler", steps=s) for s in (10, 20, 50)]
    for spacing in ("log-snr", "uniform"):  # the 2nd-order solvers on both time spacings
        rows += [dict(sampler="ode", solver="heun", steps=s, spacing=spacing) for s in (5, 10, 25)]  # NFE 9, 19, 49
        rows += [dict(sampler="ode", solver="dpm++2m", steps=s, spacing=spacing) for s in (10, 20, 50)]
    # the score-SDE samplers (issue 17); Euler-Maruyama needs log-SNR steps below 2, hence that spacing
    rows += [dict(sampler="sde", stochasticity=1.0, steps=s, spacing="log-snr") for s in (50, 100, 250)]
    rows += [dict(sampler="pc", predictor="ddpm", correctors=1, snr=0.16, steps=s) for s in (25, 50)]  # NFE 49, 99
    rows += [dict(sampler="langevin", langevin_steps=2, step_size=1.0, steps=s, spacing="log-snr") for s in (25, 50)]
    return rows


def rows(evaluator, self_conditioning) -> list[dict]:
    c = evaluator.config
    return [dict(**row, self_condition=s) for s in self_conditioning for row in sampler_grid(c.quick)
            if not c.samplers or row["sampler"] in c.samplers]


def table(results: dict) -> list[str]:
    if not results.get("samplers"):
        return []
    lines = ["", "Samplers (the class-conditional model without guidance; every row starts from the same noise):", "",
             "| sampler | solver | spacing | steps | NFE | self-cond | feature FID | accuracy | diversity |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["samplers"]:
        lines.append(f"| {r['sampler']} | {r.get('solver', '') if r['sampler'] == 'ode' else ''} | "
                     f"{r.get('spacing', 'uniform')} | {r['steps']} | {r['nfe']} | "
                     f"{'on' if r['self_condition'] else 'off'} | {r['fid']:.2f} | {r['accuracy']:.3f} | "
                     f"{r['diversity']:.3f} |")
    return lines


def plot(results: dict, out_dir, plt):
    """One panel per self-conditioning setting; colour = sampler, dashed = log-SNR spacing, grey band = real data."""
    from matplotlib.ticker import FormatStrFormatter

    if not results.get("samplers"):
        return
    name = results["checkpoint"]
    settings = sorted({r["self_condition"] for r in results["samplers"]}, reverse=True)
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], settings):
        series: dict = {}
        for r in results["samplers"]:
            if r["self_condition"] == setting:
                sampler = r["sampler"] if r["sampler"] != "ode" else f"ode {r['solver']}"
                series.setdefault((sampler, r.get("spacing", "uniform")), []).append((r["nfe"], r["fid"]))
        for (sampler, spacing), points in series.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=SAMPLER_COLOURS.get(sampler),
                    linestyle="--" if spacing == "log-snr" else "-",
                    label=sampler + (" (log-SNR spacing)" if spacing == "log-snr" else ""))
        if "real_data" in results:
            real = results["real_data"]
            ax.axhspan(real["fid"] - real["fid_std"], real["fid"] + real["fid_std"], color="0.85", zorder=0,
                       label=f"real images (±1 sd, {real['draws']} draws)")
        ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)",
               title=f"self-conditioning {'on' if setting else 'off'}")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FormatStrFormatter("%.1f"))
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("feature FID (lower is better)")
    fig.suptitle(f"{name}: quality vs. sampling cost\n({results['config']['samples']} samples per point; "
                 f"DDIM = ODE-Euler: their lines coincide)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}-fid-vs-nfe.png", dpi=120)
    plt.close(fig)


PART = Part("samplers", ("denoiser",), rows, table, defaults_for=("denoiser",), plot=plot,
            help="feature FID, accuracy and diversity per sampler and NFE")
