"""Controls and conversions that several tabs share: the sampler, spacing and guidance choices, widget values ->
SampleRequest, and what a checkpoint allows (its classes, its guidance modes)."""

from __future__ import annotations

import gradio as gr

from ..engine import ModelCache, RequestError, SampleRequest, image_shape
from ..schedules import SPACINGS
from .common import user_error, widget_bool, widget_class, widget_number

SAMPLER_LABELS = [("DDPM (ancestral)", "ddpm"), ("DDIM", "ddim"), ("ODE (probability flow)", "ode")]
# Each guidance mode's own starting scale: classifier guidance with our small noisy classifier needs ~8 to reach
# 90 % evaluator accuracy (docs/evaluation), where classifier-free guidance is at 99 % by 3.
DEFAULT_SCALES = {"none": 1.0, "cfg": 3.0, "classifier": 8.0}
GUIDANCE_LABELS = [("none (the model as it is)", "none"), ("classifier-free", "cfg"), ("classifier", "classifier")]
SPACING_LABELS = [("uniform in t", "uniform"), ("uniform in log-SNR", "log-snr"),
                  ("diffusers' 'leading' (discrete-step models)", "leading")]
assert [value for _, value in SPACING_LABELS] == list(SPACINGS)
UNCONDITIONAL = ("no class (unconditional model)", "")  # widget_class("") is None


def make_request(checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale, self_condition,
                 seed, batch_size) -> SampleRequest:
    """Widget values -> SampleRequest; the engine validates ranges, this only converts types."""
    return SampleRequest(checkpoint=str(checkpoint), sampler=str(sampler), solver=str(solver),
                         steps=widget_number(steps, "steps", int), eta=widget_number(eta, "eta"), spacing=str(spacing),
                         guidance=str(guidance), class_index=widget_class(class_index),
                         scale=widget_number(scale, "guidance scale"), self_condition=widget_bool(self_condition, "self-conditioning"),
                         seed=widget_number(seed, "seed", int), batch_size=widget_number(batch_size, "batch size", int))


def class_and_guidance(cache: ModelCache, model):
    """The class choices and the guidance modes that apply to a checkpoint: classifier-free guidance needs a null
    class, classifier guidance a noisy classifier of the model's image shape and classes."""
    classes = [(label, index) for index, label in enumerate(model.class_names)]
    if not classes or model.config.get("null_class") is not None:  # a null class can also sample with no class
        classes.append(UNCONDITIONAL)
    allowed = {"none"}
    if model.config.get("null_class") is not None:
        allowed.add("cfg")
    classifier = cache.first_of_kind("noisy-classifier")
    if classifier is not None and model.class_names and image_shape(classifier) == image_shape(model) \
            and classifier.class_names == model.class_names:
        allowed.add("classifier")
    return classes, [g for g in GUIDANCE_LABELS if g[1] in allowed]


def on_sampler_checkpoint_change(cache: ModelCache, name, guidance_value):
    """Compare, Sweep and Trajectory: the checkpoint's classes and the guidance modes it allows."""
    try:
        model = cache.get(name)
    except RequestError as error:
        raise user_error(error) from None
    classes, guidance_choices = class_and_guidance(cache, model)
    values = [g[1] for g in guidance_choices]
    guidance_value = guidance_value if guidance_value in values else ("cfg" if "cfg" in values else "none")
    return gr.Dropdown(choices=classes, value=classes[0][1]), gr.Radio(choices=guidance_choices, value=guidance_value)


def on_class_checkpoint_change(cache: ModelCache, name):
    """A class list that follows its checkpoint (a tab without guidance controls)."""
    try:
        model = cache.get(name)
    except RequestError as error:
        raise user_error(error) from None
    classes, _ = class_and_guidance(cache, model)
    return gr.Dropdown(choices=classes, value=classes[0][1])


def run_and_stop(label: str):
    """A wide primary button and its Stop button, in one row; wire them with stop_cancels."""
    with gr.Row():
        run = gr.Button(label, variant="primary", scale=4)
        stop = gr.Button("Stop", variant="stop", scale=1)
    return run, stop


def stop_cancels(stop: gr.Button, event) -> None:
    """The Stop button cancels the running event (the work stops at its next network evaluation)."""
    stop.click(None, None, None, cancels=[event], api_name=False)
