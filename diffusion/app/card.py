"""The Model card tab: a checkpoint's card, config, training summary and recorded likelihood, and the files in the
checkpoint folder with the reason any of them cannot be served."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import gradio as gr

from ..serving.engine import ModelCache, RequestError
from ..evaluation import recorded_summaries
from .common import markdown_text, user_error


def checkpoint_table(cache: ModelCache) -> str:
    rows = ["| checkpoint | kind | status |", "|---|---|---|"]
    for entry in cache.entries():
        status = "available" if entry.available else f"unavailable: {entry.error}"
        name, status = (text.replace("|", "\\|").replace("`", "'") for text in (entry.name, status))  # data, not markup
        rows.append(f"| `{name}` | {entry.kind or '?'} | {status} |")
    return "\n".join(rows)


def without_server_paths(value):
    """Metadata as shown to users: an absolute path (a training run's folder on the machine that trained it, a data
    set's location) keeps only its last part, so the page reveals no server paths."""
    if isinstance(value, dict):
        return {key: without_server_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_server_paths(item) for item in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or (len(value) > 2 and value[1:3] in (":\\", ":/"))):
        return ".../" + value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return value


def model_summary(cache: ModelCache, evaluation_dir: Path, name: str) -> str:
    try:
        model = cache.get(name)
    except RequestError as error:
        return f"**{markdown_text(name)}** is unavailable: {markdown_text(error)}"
    config, training = model.config, model.training
    card = markdown_text(model.card)  # text from a file is data, never markup
    parameters = sum(p.numel() for p in model.network.parameters())
    size = f"{parameters / 1e6:.2f} M parameters, {training.get('steps', '?')} training steps"
    measured = "".join(f"\n\n**{title}:** {markdown_text(text)}." for title, text in recorded_summaries(model, evaluation_dir))
    if model.kind == "normalizing-flow":
        bits = training.get("test_bits_per_dim")
        return (f"{card}\n\n*normalizing flow ({config['network']}), {size}"
                + (f", {bits:.2f} bits/dim on the test set" if isinstance(bits, (int, float)) else "") + ".*" + measured)
    if model.kind != "denoiser":
        return f"{card}\n\n*{model.kind}, {size}.*"
    schedule = model.schedule
    steps = f" ({schedule.discrete.steps} {schedule.discrete.kind} betas)" if schedule.name == "vp-discrete" else ""
    shape = f"{config['image_channels']} x {config['image_size']}^2 px"
    defaults = model.sampling_defaults
    few_step = (f"\n\n**Few-step model:** starts at {defaults.get('sampler', 'ode')}-{defaults.get('solver', 'euler')}, "
                f"{defaults.get('steps')} steps, guidance {defaults.get('guidance', 'none')}; live mode is offered."
                if defaults else "")
    return (f"{card}\n\n*{schedule.name} schedule{steps}, {config.get('parameterization')}-prediction, "
            f"{shape}, {size}, self-conditioning {'yes' if model.self_condition else 'no'}.*" + measured + few_step)


def model_card(cache: ModelCache, evaluation_dir: Path, name):
    try:
        model = cache.get(name)
    except RequestError as error:
        raise user_error(error) from None
    metadata = {"kind": model.kind, "config": model.config, "training": model.training}
    return model_summary(cache, evaluation_dir, name), without_server_paths(metadata)


def build_card_tab(demo: gr.Blocks, cache: ModelCache, evaluation_dir: Path, available, default):
    """The tab's widgets and events; call inside `with gr.Tab(...)`. Returns (checkpoint picker, rescan button, files)."""
    m_checkpoint = gr.Dropdown(available, value=default, label="Checkpoint")
    m_card = gr.Markdown(model_summary(cache, evaluation_dir, default) if default else "", label="Card")
    m_json = gr.JSON(label="Metadata")
    m_files = gr.Markdown("### Files in the checkpoint folder\n" + checkpoint_table(cache), label="Files")
    m_rescan = gr.Button("Re-scan the checkpoint folder", size="sm")
    m_checkpoint.change(partial(model_card, cache, evaluation_dir), m_checkpoint, [m_card, m_json], api_name="model_card")
    demo.load(partial(model_card, cache, evaluation_dir), m_checkpoint, [m_card, m_json], api_name=False)
    return m_checkpoint, m_rescan, m_files
