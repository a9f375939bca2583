"""Controls and conversions that several tabs share: the sampler, spacing and guidance choices, widget values ->
SampleRequest, what a checkpoint allows (its classes, its guidance modes), and how a request's settings reach a tab.

The request is the unit of the app. Generate turns its controls into one SampleRequest; its PNGs carry it
(diffusion.serving.settings); its "Send to" buttons hand its fields to any tab that is a RequestTarget (its controls by request
field). A checkpoint change decides which controls apply and their defaults in one place per kind of tab
(few_step_setting); settings just sent or loaded win over those defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import partial

import gradio as gr

from ..serving.engine import MAX_LOG_SNR, ModelCache, RequestError, SampleRequest, image_shape
from ..core.guidance import GUIDANCE_METHODS
from ..core.sampling import SAMPLERS
from ..core.schedules import SPACINGS
from .common import last_error, markdown_text, user_error, widget_class, widget_number, widget_self_condition

SAMPLER_LABELS = [(spec.label, name) for name, spec in SAMPLERS.items()]
# Each guidance mode's own starting scale: classifier guidance with our small noisy classifier needs ~8 to reach
# 90 % evaluator accuracy (docs/evaluation), where classifier-free guidance is at 99 % by 3.
# Autoguidance's weak model differs from the strong one less than the unconditional branch does, so it needs a
# larger w for the same push (Karras et al. 2024 report their best results at w = 2 to 3).
DEFAULT_SCALES = {"none": 1.0, "cfg": 2.0, "classifier": 8.0, "autoguidance": 3.0}
# The guidance method Generate starts at (issue 41, item 2): interval guidance (Kynkaanniemi et al. 2024: CFG only
# between log-SNR -4.7 and 1.2) at CFG's scale 2, with 15 steps (generate.APP_SAMPLING): of 27 settings in
# docs/evaluation/guided-realism, the lowest two-sample accuracy by five calibrated judges (0.710; the default before,
# CFG 3 rescaled at 10 steps: 0.793) at class accuracy >= 0.97 by both evaluators (0.985 / 0.986) and a click-to-result
# time <= 0.3 of DDIM-50 with CFG 3 through the app (0.28). A test reads the recorded choice.
DEFAULT_METHOD = "interval"
# The guidance-method fields, in the order of guidance_method_controls, at their neutral values (SampleRequest's
# defaults: plain guidance)
METHOD_FIELDS = ("rescale", "interval_low", "interval_high", "apg_eta", "apg_norm", "apg_momentum", "threshold")
NEUTRAL_METHODS = {name: {f.name: f.default for f in fields(SampleRequest)}[name] for name in METHOD_FIELDS}
# What the methods change about CFG and autoguidance alone; with other guidance (or none) they are off
CFG_MODIFIERS_OFF = {k: NEUTRAL_METHODS[k] for k in ("rescale", "apg_eta", "apg_norm", "apg_momentum")}
GUIDANCE_LABELS = [("none (the model as it is)", "none"), ("classifier-free", "cfg"), ("classifier", "classifier"),
                   ("autoguidance (by the -weak model)", "autoguidance")]
SPACING_LABELS = [("uniform in t", "uniform"), ("uniform in log-SNR", "log-snr"),
                  ("diffusers' 'leading' (discrete-step models)", "leading")]
assert [value for _, value in SPACING_LABELS] == list(SPACINGS)
UNCONDITIONAL = ("no class (unconditional model)", "")  # widget_class("") is None


def make_request(checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale, self_condition,
                 seed, batch_size, methods: dict | None = None) -> SampleRequest:
    """Widget values -> SampleRequest; the engine validates ranges, this only converts types. `methods`: the
    guidance-method fields (method_settings), or None for plain guidance."""
    return SampleRequest(**(methods or {}), checkpoint=str(checkpoint), sampler=str(sampler), solver=str(solver),
                         steps=widget_number(steps, "steps", int), eta=widget_number(eta, "eta"), spacing=str(spacing),
                         guidance=str(guidance), class_index=widget_class(class_index),
                         scale=widget_number(scale, "guidance scale"), self_condition=widget_self_condition(self_condition),
                         seed=widget_number(seed, "seed", int), batch_size=widget_number(batch_size, "batch size", int))


SELF_CONDITION_CHOICE = {None: "own", True: "on", False: "off"}  # a request's self_condition -> the control's value


def self_condition_control(model=None, value="own", **options) -> gr.Radio:
    """Self-conditioning for a checkpoint (a new control, or an update with `options`): "own" (the default here and
    in the API: on where the checkpoint was trained with it), "on" or "off"; a model trained without it has only "own"."""
    trained = bool(model is not None and model.kind == "denoiser" and model.self_condition)
    choices = ([("the checkpoint's own (on)", "own"), ("on", "on"), ("off", "off")] if trained
               else [("the checkpoint's own (off: not trained with it)", "own")])
    return gr.Radio(choices, value=value if trained else "own", label="Self-conditioning", interactive=trained,
                    info="feed the previous x0 estimate back into the network", **options)


def stochastic_sampler_controls(sampler: str = "ddim"):
    """The settings of the score-SDE samplers (shown for their sampler only): reverse SDE, predictor-corrector,
    annealed Langevin."""
    stochasticity = gr.Slider(0, 1, value=1.0, step=0.05, visible=sampler == "sde",
                              label="Stochasticity (0 = probability-flow ODE, 1 = reverse SDE)")
    predictor = gr.Radio([("DDPM step", "ddpm"), ("DDIM step", "ddim")], value="ddpm", label="Predictor",
                         visible=sampler == "pc")
    correctors = gr.Slider(0, 10, value=1, step=1, label="Corrector steps per step", visible=sampler == "pc")
    snr = gr.Slider(0.01, 1, value=0.16, step=0.01, label="Corrector signal-to-noise ratio r", visible=sampler == "pc")
    langevin_steps = gr.Slider(1, 50, value=5, step=1, label="Langevin steps per noise level",
                               visible=sampler == "langevin")
    step_size = gr.Slider(0.01, 2, value=1.0, step=0.01, label="Langevin step size c (a = c (sigma / alpha)^2)",
                          visible=sampler == "langevin")
    return [stochasticity, predictor, correctors, snr, langevin_steps, step_size]


def scale_for_guidance(mode):
    """A guidance mode chosen by the user: its own starting scale, and no scale at all for "none"."""
    return gr.Slider(value=DEFAULT_SCALES.get(mode, 1.0), interactive=mode != "none")


def stochastic_visibility(sampler):
    """stochastic_sampler_controls' visibility for a sampler."""
    return (gr.Slider(visible=sampler == "sde"), *(gr.update(visible=sampler == "pc") for _ in range(3)),
            *(gr.Slider(visible=sampler == "langevin") for _ in range(2)))


def stochastic_settings(stochasticity, predictor, correctors, snr, langevin_steps, step_size) -> dict:
    """stochastic_sampler_controls' values -> SampleRequest fields."""
    return dict(stochasticity=widget_number(stochasticity, "stochasticity"), predictor=str(predictor),
                correctors=widget_number(correctors, "corrector steps", int), snr=widget_number(snr, "corrector SNR"),
                langevin_steps=widget_number(langevin_steps, "Langevin steps", int),
                step_size=widget_number(step_size, "Langevin step size"))


def method_fields(method: str) -> dict:
    """A guidance method's settings (guidance.GUIDANCE_METHODS) as the request fields the method controls set."""
    return {key: value for key, value in GUIDANCE_METHODS[method].settings.items() if key != "guidance"}


def guidance_method_controls(method: str = "cfg"):
    """(the accordion, its settings): the guidance methods' settings (guidance.py), starting at `method`'s (each other
    setting at its neutral value; "cfg": plain guidance)."""
    start = NEUTRAL_METHODS | method_fields(method)
    title = ("plain CFG at these defaults" if method == "cfg" else
             f"starting at {GUIDANCE_METHODS[method].label}: more real images than plain CFG at the same accuracy")
    with gr.Accordion(f"Guidance methods ({title})", open=False) as accordion:
        gr.Markdown("Fixes for CFG's side effects. **Rescale** (Lin et al. 2024) pulls the guided image's spread "
                    "back to the conditional one's (phi 0: plain CFG). **Interval** (Kynkaanniemi et al. 2024) guides "
                    "only between two log-SNRs (noise levels; empty = no bound). **APG** (Sadat et al. 2024) "
                    "down-weights the part of the update that over-saturates (eta), bounds its size (r) and averages "
                    "it with reverse momentum (beta). **Dynamic thresholding** (Imagen) clamps each x0 estimate at a "
                    "percentile of its pixels. Rescale and APG change classifier-free guidance and autoguidance only: "
                    "with other guidance, or none, they are off.")
        rescale = gr.Slider(0, 1, value=start["rescale"], step=0.05, label="CFG rescale phi")
        with gr.Row():  # text boxes: empty means no bound (a gr.Number shows and sends an empty value as 0)
            interval_low = interval_box(start["interval_low"], "Interval: from log-SNR", "interval-low")
            interval_high = interval_box(start["interval_high"], "to log-SNR", "interval-high")
        # The boxes' own sentence, right under them (a reversed interval was said three times, ~900 px lower).
        interval_note = gr.Markdown("", elem_id="interval-note")
        for box in (interval_low, interval_high):
            box.change(interval_note_text, [interval_low, interval_high], interval_note, api_name=False,
                       show_progress="hidden", queue=False, preprocess=False)
        with gr.Row():
            apg_eta = gr.Slider(0, 1, value=start["apg_eta"], step=0.05, label="APG eta (parallel part)")
            apg_norm = gr.Slider(0, 50, value=start["apg_norm"], step=0.5, label="APG norm bound r (0: none)")
            apg_momentum = gr.Slider(-0.9, 0.9, value=start["apg_momentum"], step=0.05, label="APG momentum beta")
        threshold = gr.Slider(0, 0.999, value=start["threshold"], step=0.005,
                              label="Dynamic thresholding percentile (0: off)")
    return accordion, [rescale, interval_low, interval_high, apg_eta, apg_norm, apg_momentum, threshold]


NO_BOUND = "none"  # what an interval box may hold instead of a number (as in the X/Y grid); empty means the same


def interval_box(value, label: str, elem_id: str) -> gr.Textbox:
    """A guidance-interval bound: a log-SNR, or empty for no bound. A text box, because Gradio's number box cannot
    hold "empty": once its accordion opened it showed 0 and sent 0, so an interval [0, 0] switched guidance off
    (issue 37). What the box shows is what the request gets."""
    return gr.Textbox(interval_text(value), label=label, placeholder="empty: no bound",
                      info="a log-SNR from -30 to 30", max_lines=1, elem_id=elem_id)


def interval_text(bound: float | None) -> str:
    """A request's interval bound as its box shows it: empty for no bound. Never None: a box restored to None and
    opened later rendered empty and sent "" over a value typed into it at once (issue 37)."""
    return "" if bound is None else f"{bound:g}"


def method_values(fields: dict) -> list:
    """A request's guidance-method fields as guidance_method_controls' values, in METHOD_FIELDS order."""
    return [interval_text(fields[key]) if key.startswith("interval_") else fields[key] for key in METHOD_FIELDS]


def interval_bound(value, name: str):
    """An interval box's value -> a request's bound: None (no bound) for empty or "none", else a number."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", NO_BOUND)):
        return None
    return widget_number(value, name)


INTERVAL_POINTER = "the guidance interval cannot be used as typed; see the sentence under its boxes (Guidance methods)"


def interval_problem(low, high) -> str:
    """The sentence for two interval boxes that make no interval (a bound that is not a number, or from > to), or ""."""
    try:
        low, high = interval_bound(low, "the interval's start"), interval_bound(high, "the interval's end")
    except RequestError as error:
        return f"{str(error)[0].upper()}{str(error)[1:]}."
    outside = [bound for bound in (low, high) if bound is not None and abs(bound) > MAX_LOG_SNR]
    if outside:
        return f"A bound must be a log-SNR from -{MAX_LOG_SNR:g} to {MAX_LOG_SNR:g}; {outside[0]:g} is not."
    if None not in (low, high) and low > high:
        return (f"This interval is reversed: from {low:g} to {high:g} holds no noise level, so guidance would never "
                f"apply. Swap the bounds, or empty a box for no bound.")
    return ""


def interval_note_text(low, high) -> str:
    """interval_problem as the note under the boxes shows it (red by app.PAGE_CSS; what was typed is data)."""
    return markdown_text(interval_problem(low, high))


def method_settings(rescale, interval_low, interval_high, apg_eta, apg_norm, apg_momentum, threshold) -> dict:
    """guidance_method_controls' values -> SampleRequest fields (an empty interval bound is None: unbounded)."""
    return dict(rescale=widget_number(rescale, "CFG rescale"), interval_low=interval_bound(interval_low, "interval start"),
                interval_high=interval_bound(interval_high, "interval end"), apg_eta=widget_number(apg_eta, "APG eta"),
                apg_norm=widget_number(apg_norm, "APG norm bound"),
                apg_momentum=widget_number(apg_momentum, "APG momentum"),
                threshold=widget_number(threshold, "thresholding percentile"))


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
    if model.class_names and f"{model.name}-weak" in cache.names("denoiser"):
        allowed.add("autoguidance")
    return classes, [g for g in GUIDANCE_LABELS if g[1] in allowed]


def checkpoint_choices(cache: ModelCache, name):
    """class_and_guidance of a checkpoint chosen in a tab; a checkpoint that fails to load is the user's error."""
    try:
        model = cache.get(name)
    except RequestError as error:
        raise user_error(error) from None
    return class_and_guidance(cache, model)


def few_step_setting(model, tab_sampling: dict, was_few_step: bool, sent=None) -> dict:
    """The sampling settings a tab takes on a checkpoint change: settings just sent to it for this checkpoint (`sent`,
    a request's fields), else a few-step model's own (a reflow student: ODE-Euler, 2 steps, no guidance), the tab's own
    (`tab_sampling`) when leaving one, else {} (keep the user's choices)."""
    if isinstance(sent, dict) and sent.get("checkpoint") == model.name:
        return dict(sent)
    defaults = model.sampling_defaults if model.kind == "denoiser" else {}
    return dict(defaults) or (dict(tab_sampling) if was_few_step else {})


def class_value(classes, setting: dict):
    """The class a checkpoint change selects: the sent one where it is among the checkpoint's, else the first."""
    wanted = "" if setting.get("class_index", 0) is None else setting.get("class_index")
    return wanted if wanted in [value for _, value in classes] else classes[0][1]


@dataclass
class RequestTarget:
    """A tab that takes a request's settings from Generate's "Send to" buttons: its id and name, its controls by
    request field (also "ddim_steps", "ode_steps", "methods": the tab's own forms of steps and guidance), the range
    each bounded control allows there, and the state its checkpoint change reads, so the switch of checkpoint that
    sending may cause keeps the sent settings instead of the checkpoint's defaults."""

    tab: str
    name: str
    controls: dict
    ranges: dict = field(default_factory=dict)  # field -> (low, high) of that tab's control
    sent: gr.State | None = None
    note: gr.Markdown | None = None  # where the tab says that settings arrived (its results' caption)
    button: str = ""  # the label of the tab's run button


def sent_values(target: RequestTarget, fields: dict, study: dict | None = None) -> tuple[list, list[str]]:
    """A request's fields (and a study's own settings, settings.checked_study) as values of the target's controls (in
    `controls` order; gr.skip() for one that neither names), and a sentence for each value the target cannot show as
    it is (never changed silently)."""
    values, notes = [], []
    study = study or {}
    for name in target.controls:
        if name in study:
            values.append(study[name])
            continue
        key = "steps" if name in ("ddim_steps", "ode_steps") else name
        if name == "methods":
            guidance = fields.get("guidance")
            value = [guidance] if guidance in GUIDANCE_METHODS else gr.skip()
        elif key not in fields:
            value = gr.skip()
        elif name == "class_index":
            value = "" if fields[key] is None else fields[key]
        elif name == "self_condition":
            value = SELF_CONDITION_CHOICE.get(fields[key], "own")
        else:
            value = fields[key]
            if name in target.ranges and value is not None:
                low, high = target.ranges[name]
                if not low <= value <= high:
                    clipped = min(max(value, low), high)
                    notes.append(f"{target.name} takes {name.replace('_', ' ')} from {low} to {high}: "
                                 f"{value} became {clipped}")
                    value = clipped
        values.append(value)
    return values, notes


def allowed_guidance(guidance_choices, wanted) -> str:
    """`wanted` where the checkpoint allows it, else classifier-free guidance, else none."""
    allowed = [value for _, value in guidance_choices]
    return wanted if wanted in allowed else ("cfg" if "cfg" in allowed else "none")


def on_study_checkpoint_change(cache: ModelCache, tab_sampling: dict, name, guidance_value, was_few_step, sent=None):
    """Trajectory and X/Y grid: the checkpoint's classes and guidance modes, and its settings (few_step_setting), as
    Generate starts it. Outputs: class, guidance, sampler, solver, steps, scale, is-few-step, sent (cleared)."""
    classes, guidance_choices = checkpoint_choices(cache, name)
    model = cache.get(name)
    setting = few_step_setting(model, tab_sampling, was_few_step, sent)
    guidance_value = allowed_guidance(guidance_choices, setting.get("guidance", guidance_value))
    chosen = lambda key: {"value": setting[key]} if key in setting else {}  # noqa: E731
    scale = {"value": setting.get("scale", DEFAULT_SCALES.get(guidance_value, 1.0))} if setting else {}
    return (gr.Dropdown(choices=classes, value=class_value(classes, setting)),
            gr.Radio(choices=guidance_choices, value=guidance_value),
            gr.Radio(**chosen("sampler")), gr.Dropdown(**chosen("solver")), gr.Slider(**chosen("steps")),
            gr.Slider(interactive=guidance_value != "none", **scale), bool(model.kind == "denoiser"
                                                                           and model.sampling_defaults), None)


def follow_study_checkpoint(cache: ModelCache, tab_sampling: dict, controls: dict) -> gr.State:
    """Trajectory's and the X/Y grid's checkpoint change (on_study_checkpoint_change) wired over their controls by
    request field; returns the tab's `sent` state."""
    few_step, sent = gr.State(False), gr.State(None)
    outputs = [controls[f] for f in ("class_index", "guidance", "sampler", "solver", "steps", "scale")]
    controls["checkpoint"].change(partial(on_study_checkpoint_change, cache, tab_sampling),
                                  [controls["checkpoint"], controls["guidance"], few_step, sent],
                                  [*outputs, few_step, sent], api_name=False)
    return sent


def on_compare_checkpoint_change(cache: ModelCache, tab_sampling: dict, name, guidance_value, was_few_step, sent=None):
    """Compare: the checkpoint's classes and guidance modes; a few-step model's (or sent) steps and solver go to the
    DDIM and ODE columns (DDPM keeps its own: it has no few-step form). Outputs: class, guidance, scale, DDIM steps,
    ODE steps, ODE solver, is-few-step, sent (cleared)."""
    classes, guidance_choices = checkpoint_choices(cache, name)
    model = cache.get(name)
    setting = few_step_setting(model, tab_sampling, was_few_step, sent)
    guidance_value = allowed_guidance(guidance_choices, setting.get("guidance", guidance_value))
    steps = lambda key: gr.Slider(value=setting[key]) if key in setting else gr.Slider()  # noqa: E731
    return (gr.Dropdown(choices=classes, value=class_value(classes, setting)),
            gr.Radio(choices=guidance_choices, value=guidance_value),
            gr.Slider(interactive=guidance_value != "none",
                      **({"value": setting.get("scale", DEFAULT_SCALES.get(guidance_value, 1.0))} if setting else {})),
            steps("ddim_steps" if "ddim_steps" in setting else "steps"),
            steps("ode_steps" if "ode_steps" in setting else "steps"),
            gr.Dropdown(value=setting["solver"]) if "solver" in setting else gr.Dropdown(),
            bool(model.kind == "denoiser" and model.sampling_defaults), None)


def method_choices(guidance_choices) -> list[tuple[str, str]]:
    """The guidance methods (guidance.GUIDANCE_METHODS) a checkpoint allows, given its guidance modes."""
    modes = {value for _, value in guidance_choices}
    return [(f"{method.label} ({method.paper})", name) for name, method in GUIDANCE_METHODS.items()
            if method.settings["guidance"] in modes]


def on_methods_checkpoint_change(cache: ModelCache, tab_sampling: dict, name, chosen, was_few_step, sent=None):
    """Guidance sweep: the checkpoint's classes, the guidance methods it allows (kept where still allowed, or the sent
    one), and a few-step model's (or sent) sampler, solver and steps (few_step_setting). Outputs: class, methods,
    sampler, solver, steps, is-few-step, sent (cleared)."""
    classes, guidance_choices = checkpoint_choices(cache, name)
    model = cache.get(name)
    methods = method_choices(guidance_choices)
    setting = few_step_setting(model, tab_sampling, was_few_step, sent)
    if setting.get("guidance") in GUIDANCE_METHODS and sent:
        chosen = [setting["guidance"]]
    kept = [m for m in (chosen or []) if m in {value for _, value in methods}]
    chosen_value = lambda key: {"value": setting[key]} if key in setting else {}  # noqa: E731
    return (gr.Dropdown(choices=classes, value=class_value(classes, setting)),
            gr.CheckboxGroup(choices=methods, value=kept),
            gr.Radio(**chosen_value("sampler")), gr.Dropdown(**chosen_value("solver")),
            gr.Slider(**chosen_value("steps")), bool(model.kind == "denoiser" and model.sampling_defaults), None)


def on_class_checkpoint_change(cache: ModelCache, name):
    """A class list that follows its checkpoint (a tab without guidance controls)."""
    classes, _ = checkpoint_choices(cache, name)
    return gr.Dropdown(choices=classes, value=classes[0][1])


def run_and_stop(label: str):
    """A wide primary button and its Stop button, in one row; wire them with settle_run."""
    with gr.Row():
        run = gr.Button(label, variant="primary", scale=4)
        stop = gr.Button("Stop", variant="stop", scale=1)
    return run, stop


STOPPED = "**Stopped.** This run was cancelled and its results cleared; press the button to run again."


def settle_run(event, outputs, note, stop: gr.Button | None = None) -> None:
    """What a run that does not finish leaves on screen: never an earlier run's results or half-made previews as if
    they were this run's. Stop cancels the event (the work stops at its next network evaluation) and clears its
    outputs, saying "Stopped." in `note` (one of them); a failure clears them too and writes its sentence into `note`,
    where it stays until the next run (the red message at the top right stays until closed)."""
    outputs = list(outputs)

    def cleared(sentence: str):
        values = tuple(sentence if output is note else None for output in outputs)
        return values if len(values) > 1 else values[0]

    def failed(request: gr.Request):
        message = last_error(request)
        if message is not None:
            return cleared(f"**Not run:** {markdown_text(message)}")
        if stop is not None:  # cancelled by Stop: the browser runs this once the server has the cancel (see below)
            return cleared(STOPPED)
        return tuple(gr.skip() for _ in outputs) if len(outputs) > 1 else gr.skip()

    # Instant, outside the queue: the run's failure and its Stop are said at once, never behind another user's job.
    # Gradio's page sends a Stop's cancel and runs Stop's own handler side by side: the run can stream previews after
    # that handler's answer, until its cancel reaches the server. Then the page runs the run's failure handlers, so
    # "Stopped" is said again there, after the run's last word (a CI run saw a preview left after "Stopped").
    event.failure(failed, None, outputs, api_name=False, show_progress="hidden", queue=False)
    if stop is not None:
        def stopped():  # instant, outside the queue: a Stop is never refused by the per-session or address caps
            return cleared(STOPPED)

        stop.click(stopped, None, outputs, cancels=[event], api_name=False, queue=False)
