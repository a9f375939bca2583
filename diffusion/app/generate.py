"""The Generate tab: one checkpoint, every sampler and guidance option (or a normalizing flow's temperature), live
progress and x0 previews, then the gallery, NFE and time, and a PNG download."""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import gradio as gr
import numpy as np

from ..serving.backend import backend_for
from ..serving.previews import PreviewClock
from ..serving.engine import (MAX_BATCH, MAX_STEPS, MAX_TEMPERATURE, FlowRequest, ModelCache, RequestError,
                              SamplingError, SampleRequest, check_request, check_work, expected_nfe, request_work)
from ..core.sampling import ODE_SOLVERS
from ..serving.settings import request_from_png, request_from_text, settings_problems, settings_text
from ..core.guidance import PAIRED_MODES
from .card import model_summary
from .outputs import inside_outputs
from .common import (grid_pil, markdown_text, result_pngs, stream_result, user_error, widget_bool,
                     widget_class, widget_number)
from .controls import (CFG_MODIFIERS_OFF, DEFAULT_METHOD, DEFAULT_SCALES, INTERVAL_POINTER, METHOD_FIELDS,
                       SAMPLER_LABELS, interval_problem,
                       SELF_CONDITION_CHOICE, SPACING_LABELS, RequestTarget, class_and_guidance, guidance_method_controls, make_request,
                       method_fields, method_settings, method_values,
                       self_condition_control, sent_values, settle_run, stochastic_sampler_controls,
                       stochastic_settings, stochastic_visibility)


def generate_request(*values):
    """The Generate tab's widget values (generate_request_fields' order) -> SampleRequest, or the user's error."""
    try:
        return generate_request_fields(*values)
    except RequestError as error:
        raise user_error(error) from None


def generate_request_fields(checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale,
                            self_condition, seed, batch_size, rescale=0.0, interval_low=None, interval_high=None,
                            apg_eta=1.0, apg_norm=0.0, apg_momentum=0.0, threshold=0.0, stochasticity=1.0,
                            predictor="ddpm", correctors=1, snr=0.16, langevin_steps=5, step_size=1.0) -> SampleRequest:
    """generate_request's conversion, raising RequestError (for the estimate line, which shows it in place)."""
    methods = method_settings(rescale, interval_low, interval_high, apg_eta, apg_norm, apg_momentum, threshold)
    if str(guidance) not in PAIRED_MODES:  # rescale and APG modify CFG and autoguidance only
        methods |= CFG_MODIFIERS_OFF
    methods |= stochastic_settings(stochasticity, predictor, correctors, snr, langevin_steps, step_size)
    return make_request(checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale,
                        self_condition, seed, batch_size, methods)


def generate(cache: ModelCache, checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale, self_condition, seed,
             batch_size, rescale=0.0, interval_low=None, interval_high=None, apg_eta=1.0, apg_norm=0.0,
             apg_momentum=0.0, threshold=0.0, stochasticity=1.0, predictor="ddpm", correctors=1, snr=0.16,
             langevin_steps=5, step_size=1.0, progress=gr.Progress()):
    request = generate_request(checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale,
                               self_condition, seed, batch_size, rescale, interval_low, interval_high, apg_eta,
                               apg_norm, apg_momentum, threshold, stochasticity, predictor, correctors, snr,
                               langevin_steps, step_size)
    previews = PreviewClock()
    columns = min(8, request.batch_size)

    def work(emit):
        return backend_for(cache).run_request(request, progress=lambda done, total: emit(("progress", done, total)),
                           preview=lambda step, t, x_t, x0: emit(("preview", step, x0.float().cpu()))
                           if previews.due() else None)

    def on_event(event):
        if event[0] == "progress":
            progress((event[1], event[2]), desc=f"network evaluation {event[1]}/{event[2]}")
            return None
        if event[0] == "preview":
            preview = gr.Image(value=grid_pil(event[2], columns), visible=True)
            return None, preview, f"step {event[1] + 1}/{request.steps}: x0 estimate", None
        return None

    result = yield from stream_result(work, on_event, outputs=4, limit_seconds=cache.budget.seconds)
    yield finished(cache, result, columns)


def speed(images: int, seconds: float) -> str:
    """Images per second, or seconds per image where that is the readable one (4 images in 91 s: "22.8 s/image",
    not "0.0 images/s")."""
    rate = images / max(seconds, 1e-9)
    return f"{rate:.1f} images/s" if rate >= 1 else f"{1 / rate:.1f} s/image ({rate:.2f} images/s)"


def finished(cache: ModelCache, result, columns: int, note: str = ""):
    """Gallery, grid, status line and PNG download of a finished request."""
    status = (f"**{len(result.images)} images** (seed {result.request.seed}), NFE {result.nfe}, {result.seconds:.2f} s, "
              f"{speed(len(result.images), result.seconds)} on {cache.device}{note}")
    singles, grid = result_pngs(result, columns, "samples")  # every file carries the request that made it
    return singles, HIDDEN_PREVIEW, status, grid


# The previews show while sampling; the finished images are the gallery's (one picture of them, not two).
HIDDEN_PREVIEW = gr.Image(value=None, visible=False)


def generate_live(cache: ModelCache, live, *values):
    """Live mode: one request at once, without progress or previews, when a class, scale or seed changes and the box
    is ticked. Stale events are dropped before they reach this handler: its events are wired with
    trigger_mode="always_last", so while one runs the browser keeps only the newest change and sends that next."""
    if not widget_bool(live, "live mode"):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    request = generate_request(*values)
    try:
        result = backend_for(cache).run_request(request)
    except (RequestError, SamplingError) as error:
        raise user_error(error) from None
    return finished(cache, result, min(8, request.batch_size), note=" (live)")


def generate_flow(cache: ModelCache, checkpoint, class_index, temperature, seed, batch_size):
    """A normalizing flow: x = decode(T z, y), one exact pass, so no progress bar is needed."""
    try:
        request = FlowRequest(checkpoint=str(checkpoint), temperature=widget_number(temperature, "temperature"),
                              class_index=widget_class(class_index), seed=widget_number(seed, "seed", int),
                              batch_size=widget_number(batch_size, "batch size", int))
        result = backend_for(cache).run_request(request)
    except (RequestError, SamplingError) as error:
        raise user_error(error) from None
    columns = min(8, request.batch_size)
    status = (f"**{len(result.images)} images**, one exact pass (NFE 1), {result.seconds:.3f} s, "
              f"{speed(len(result.images), result.seconds)} on {cache.device}")
    singles, grid = result_pngs(result, columns, "samples")
    return singles, HIDDEN_PREVIEW, status, grid


# Where the tab starts for most denoisers: DPM-Solver++(2M) with 15 steps and interval guidance at scale 2, the
# guided-realism evaluation's choice (controls.DEFAULT_METHOD says why): 0.28 of the classic DDIM-50 with CFG 3's
# click-to-result time (1.4 s against 4.9 s on 2 CPU cores). The classic DDIM-50 is one click away (the sampler radio,
# and the examples).
APP_SAMPLING = {"sampler": "ode", "solver": "dpm++2m", "steps": 15}
APP_GUIDANCE = {"guidance": "cfg", "scale": DEFAULT_SCALES["cfg"]} | method_fields(DEFAULT_METHOD)



def on_checkpoint_change(cache: ModelCache, evaluation_dir: Path, name, sampler, few_step_before, loaded=None,
                         chosen_class=None):
    """Class names, the controls that apply to the checkpoint's kind, and its card.

    A denoiser shows the sampler, steps, guidance and self-conditioning; a normalizing flow shows a temperature
    instead, and its own Generate button (API /generate_flow). A few-step model (one whose file names its sampling
    defaults, e.g. a reflow student) sets the sampler, steps and guidance to them and offers live mode; leaving one
    puts the tab's own defaults back. Settings just loaded from a PNG for this checkpoint (`loaded`, a request's
    fields) are restored instead of any defaults. The chosen class (`chosen_class`) stays where the new checkpoint
    has it. The last outputs are whether a few-step model is now selected, the normalizing flow /generate_flow samples
    (kept when a denoiser is chosen), and `loaded` cleared."""
    try:
        model = cache.get(name)
    except RequestError as error:
        raise user_error(error) from None
    classes, guidance_choices = class_and_guidance(cache, model)
    denoiser = model.kind == "denoiser"
    defaults = model.sampling_defaults if denoiser else {}
    few_step = bool(defaults)
    self_cond = self_condition_control(model, visible=denoiser)
    modes = [g[1] for g in guidance_choices]
    guidance_value = defaults.get("guidance", "cfg" if "cfg" in modes else "none")
    guidance_value = guidance_value if guidance_value in modes else "none"
    if not denoiser:
        sampler = ""
    setting = defaults if few_step else APP_SAMPLING if few_step_before else {}  # {}: keep the user's choices
    if setting:
        setting = setting | {"scale": DEFAULT_SCALES.get(guidance_value, 1.0)}
    class_value = chosen_class if chosen_class in [value for _, value in classes] else classes[0][1]  # kept if it has it
    restore = loaded if isinstance(loaded, dict) and loaded.get("checkpoint") == name else None
    if restore:  # a PNG's settings win over every default
        setting = {key: restore[key] for key in ("sampler", "solver", "steps", "eta", "spacing", "scale", "temperature")
                   if key in restore}
        guidance_value = restore.get("guidance", guidance_value)
        class_value = "" if restore.get("class_index") is None else restore["class_index"]
        self_cond = self_condition_control(model, SELF_CONDITION_CHOICE.get(restore.get("self_condition"), "own"),
                                           visible=denoiser)
    sampler = setting.get("sampler", sampler)
    return (gr.Dropdown(choices=classes, value=class_value), self_cond,
            gr.Radio(choices=guidance_choices, value=guidance_value, visible=denoiser), model_summary(cache, evaluation_dir, name),
            gr.Radio(visible=denoiser, **_value(setting, "sampler")),
            gr.Dropdown(visible=denoiser and sampler == "ode", **_value(setting, "solver")),
            gr.Slider(visible=denoiser, **_value(setting, "steps")),
            gr.Slider(visible=denoiser and sampler == "ddim", **_value(setting, "eta")),
            gr.Radio(visible=denoiser, **_value(setting, "spacing")),
            gr.Slider(visible=denoiser, interactive=guidance_value != "none", **_value(setting, "scale")),
            gr.Slider(visible=not denoiser, **_value(setting, "temperature")), gr.Button(visible=denoiser),
            gr.Button(visible=not denoiser),
            gr.Checkbox(visible=few_step, value=few_step and bool(restore and restore.get("live"))), few_step,
            gr.Dropdown(value=name) if model.kind == "normalizing-flow" else gr.skip(), None,
            gr.Accordion(visible=denoiser), *stochastic_visibility(sampler if denoiser else ""),
            *_switched(name, model.kind, restore))


PREVIEW_LABEL = {"denoiser": "While sampling: the x0 estimates", "normalizing-flow": "One exact decode"}


def _switched(name: str, kind: str, restore: dict | None):
    """A new checkpoint clears the last one's results (gallery, grid, download) and says so; settings being restored
    keep their own status line, and a run restored from the history its images."""
    preview = gr.Image(value=None, visible=False, label=PREVIEW_LABEL.get(kind, PREVIEW_LABEL["denoiser"]))
    if restore and restore.get(RESTORED_OUTPUTS):
        return gr.skip(), preview, gr.skip(), gr.skip()
    status = gr.skip() if restore else f"Now **{markdown_text(name)}**: press **Generate**."
    return None, preview, status, None


# --- history: this browser's runs, newest first, kept in its localStorage (gr.BrowserState) ------
MAX_HISTORY = 20
RESTORED_OUTPUTS = "restored outputs"  # a `loaded` key: the checkpoint change must keep the images a restore showed
HISTORY_KEY = "diffusion-playground-history"  # fixed, so the list outlives a reload and a server restart
# BrowserState encrypts with this; it travels to the page, so it is no secret: whatever comes back is checked as hostile.
HISTORY_CIPHER = "diffusion-playground-history-v1"
GONE_TILE = np.full((28, 28, 3), 200, dtype=np.uint8)  # the thumbnail of a run whose files are gone (light grey)


@dataclass(frozen=True)
class HistoryEntry:
    """One run as the browser keeps it: the JSON settings chunk of its grid PNG, its files and when it finished."""
    settings: str
    grid: str
    images: tuple[str, ...]
    finished: str  # HH:MM:SS

    @classmethod
    def from_browser(cls, value) -> HistoryEntry:
        """An entry read back from the browser, checked: RequestError with a sentence when it is malformed or names a
        file outside this server's output folder (nothing is opened)."""
        if not isinstance(value, dict) or not isinstance(value.get("settings"), str):
            raise RequestError("that history entry is malformed; run again")
        images = value.get("images")
        if not isinstance(images, list) or len(images) > MAX_BATCH:
            raise RequestError("that history entry is malformed; run again")
        paths = [value.get("grid"), *images]
        if not all(inside_outputs(path) for path in paths):
            raise RequestError("that history entry names a file outside this server's outputs; nothing was read")
        finished = value.get("finished")
        finished = finished if isinstance(finished, str) and re.fullmatch(r"\d\d:\d\d:\d\d", finished) else "?"
        return cls(value["settings"], value["grid"], tuple(images), finished)

    def request(self):
        """(the request, the checkpoint's SHA-256), checked field by field as a dropped PNG's are."""
        return request_from_text(self.settings)

    def files_exist(self) -> bool:
        return all(Path(path).is_file() for path in (self.grid, *self.images))


def checked_history(history) -> list[HistoryEntry]:
    """The browser's list without the entries that fail the checks (the page then shows and indexes the same list)."""
    entries = []
    for value in (history if isinstance(history, list) else [])[:MAX_HISTORY]:
        try:
            entry = HistoryEntry.from_browser(value)
            run_caption(entry.request()[0])  # a value of a wrong type fails here, not in the page's gallery
        except (RequestError, TypeError, ValueError, AttributeError):
            continue
        entries.append(entry)
    return entries


def history_tiles(entries: list[HistoryEntry]) -> list:
    """The gallery of the history: each run's first image (or a grey tile once its files are gone) and its caption."""
    tiles = []
    for entry in entries:
        caption = f"{run_caption(entry.request()[0])}, {entry.finished}"
        if entry.files_exist():
            tiles.append(((entry.images or (entry.grid,))[0], caption))
        else:
            tiles.append((GONE_TILE, caption + " (images gone: click to restore the settings)"))
    return tiles


def show_history(history):
    """On page load: the history this browser kept, checked, and its gallery."""
    entries = checked_history(history)
    return [asdict(entry) | {"images": list(entry.images)} for entry in entries], history_tiles(entries)


def add_to_history(history, grid_file, images):
    """A finished run joins the history: its grid PNG's settings (so the entry restores after its files are gone),
    its files and the time."""
    path = grid_file.get("path") if isinstance(grid_file, dict) else grid_file
    if not inside_outputs(path):  # the file box's value comes back from the browser
        return gr.skip(), gr.skip()
    try:
        settings = settings_text(path)
        request_from_text(settings)
    except RequestError:
        return gr.skip(), gr.skip()
    singles = [item[0] if isinstance(item, (list, tuple)) else item for item in (images or [])]
    singles = [single.get("path") if isinstance(single, dict) else single for single in singles]
    entry = {"settings": settings, "grid": path, "images": singles, "finished": time.strftime("%H:%M:%S")}
    return show_history([entry, *(history if isinstance(history, list) else [])])


def run_caption(request) -> str:
    """A run in one line: checkpoint, sampler and steps (or temperature), guidance, seed and images."""
    if isinstance(request, FlowRequest):
        how = f"T {request.temperature:g}"
    else:
        how = f"{request.sampler.upper()}{'-' + request.solver if request.sampler == 'ode' else ''} {request.steps}"
        how += f", {request.guidance} {request.scale:g}" if request.guidance != "none" else ", no guidance"
    return f"{request.checkpoint}: {how}, seed {request.seed}, {request.batch_size} images"


def restore_run(cache: ModelCache, history, event: gr.SelectData):
    """A click on a history entry: every control as that run had it, and its images while their files exist."""
    if not isinstance(history, list) or not 0 <= event.index < len(history):
        raise user_error("that history entry is gone; run again")
    try:
        entry = HistoryEntry.from_browser(history[event.index])
        request, sha256 = entry.request()
        problems = settings_problems(cache, request)  # the checks every request passes, one sentence per bad field
    except RequestError as error:
        raise user_error(error) from None
    if problems:
        raise user_error("that history entry's settings cannot run here: " + "; ".join(problems))
    *controls, status, loaded = settings_for_request(cache, request, sha256)
    if entry.files_exist():
        loaded[RESTORED_OUTPUTS] = True
        status = f"Restored from the history: {markdown_text(run_caption(request))}, {entry.finished}."
        return (*controls, status, loaded, list(entry.images), entry.grid)
    return (*controls, status + " Its image files are gone (the server was restarted or has pruned them); press "
            "**Generate** to make them again.", loaded, None, None)


def sampler_controls(cache: ModelCache, sampler, name):
    """The controls of the chosen sampler (solver, eta, score-SDE settings), for denoisers only: a flow shows none."""
    try:
        denoiser = cache.get(name).kind == "denoiser"
    except RequestError:
        denoiser = True
    shown = sampler if denoiser else ""
    return (gr.Dropdown(visible=shown == "ode"), gr.Slider(visible=shown == "ddim"), *stochastic_visibility(shown))


STOCHASTIC_FIELDS = ("stochasticity", "predictor", "correctors", "snr", "langevin_steps", "step_size")


def load_settings(cache: ModelCache, file):
    """A PNG made by this app (its grid or any one image) -> every Generate control, a status line, and the request's
    fields, which the checkpoint change that may follow restores instead of the new checkpoint's defaults."""
    path = file.get("path") if isinstance(file, dict) else file
    try:
        if not isinstance(path, str):
            raise RequestError("drop a PNG that this app (or `python -m diffusion sample`) saved")
        request, sha256 = request_from_png(path)
    except RequestError as error:
        raise user_error(error) from None
    return settings_for_request(cache, request, sha256)


def settings_for_request(cache: ModelCache, request, sha256: str):
    """A checked request -> every Generate control, a status line, and the request's fields (load_settings' answer)."""
    try:
        model = cache.get(request.checkpoint)
    except RequestError as error:
        raise user_error(error) from None
    fields = asdict(request)
    flow = isinstance(request, FlowRequest)
    same_file = not sha256 or sha256 == model.sha256
    status = (f"Settings loaded: **{markdown_text(request.checkpoint)}**, seed {request.seed}, {request.batch_size} "
              f"image(s). Press **Generate** for the same pixels."
              + ("" if same_file else " The checkpoint file has changed since that PNG was made: the pixels may differ."))
    value = lambda key: gr.skip() if flow else fields[key]  # noqa: E731 (a flow has no sampler settings)
    return (request.checkpoint, *(value(key) for key in ("sampler", "solver", "steps", "eta", "spacing", "guidance")),
            "" if request.class_index is None else request.class_index, value("scale"),
            gr.skip() if flow else SELF_CONDITION_CHOICE.get(request.self_condition, "own"), request.seed,
            request.batch_size, *([gr.skip()] * len(METHOD_FIELDS) if flow else method_values(fields)),
            *(value(key) for key in STOCHASTIC_FIELDS),
            fields["temperature"] if flow else gr.skip(), status, fields)


def _value(setting: dict, key: str) -> dict:
    return {"value": setting[key]} if key in setting else {}


def estimate(cache: ModelCache, *values) -> str:
    """Before a run: its network evaluations and the time they should take here (the work budget's FLOP count at this
    machine's measured rate), or the sentence that says why it cannot run as set."""
    try:
        if cache.get(str(values[0])).kind != "denoiser":
            return "Next run: one exact pass per image (NFE 1)."
        if len(values) > 14 and interval_problem(values[13], values[14]):
            return f"**Cannot run as set:** {INTERVAL_POINTER}."
        request = generate_request_fields(*values)
        model = check_request(cache, request)
        check_work(cache, [request], model=model)  # over the budget: said here, before the press is refused
    except RequestError as error:
        return f"**Cannot run as set:** {markdown_text(error)}"
    work = request_work(cache, request, model)
    rows = {"cfg": " x 2 rows (CFG)", "autoguidance": " + the weak model's", "classifier": " + the classifier's gradient"}
    if request.guidance == "cfg" and request.scale == 0:  # both rows are evaluated (images stay as at any w)
        rows["cfg"] = " x 2 rows (CFG; at w = 0 the guided row changes nothing)"
    seconds = cache.estimate_seconds(work)
    return (f"Next run: NFE **{expected_nfe(request)}**{rows.get(request.guidance, '')} for {request.batch_size} "
            f"images, about **{seconds:.1f} s** on this machine ({cache.device}).")


def count_run(runs_done: int) -> int:
    """One more finished run (its change re-estimates the next run)."""
    return runs_done + 1


def picked_image(event: gr.SelectData):
    """The seed and noise index of a gallery image, read from the settings its PNG carries."""
    value = event.value if isinstance(event.value, dict) else {}
    path = (value.get("image") or {}).get("path")
    try:
        request, _ = request_from_png(path) if isinstance(path, str) else (None, None)
    except RequestError:
        request = None
    if request is None:
        return "This image carries no settings."
    return (f"Image {event.index + 1}: seed **{request.seed}**, noise index **{request.first_index}**. Its PNG holds a "
            f"one-image request: drop it into *Load settings* to make this image alone.")


def random_seed():
    return random.randint(0, 2**31 - 1)


SEND_TARGETS = {"compare": "Compare samplers", "sweep": "Guidance sweep", "xy": "X/Y grid", "trajectory": "Trajectory",
                "edit": "Edit (the clicked image)"}


@dataclass
class GenerateTab(RequestTarget):
    """Generate as the other tabs see it: a RequestTarget (history and PNGs restore into it), its controls in
    generate_request's order, its status line and its "Send to" buttons by target tab."""

    inputs: list = field(default_factory=list)
    status: gr.Markdown | None = None
    send_buttons: dict = field(default_factory=dict)
    temperature: gr.Slider | None = None
    live: gr.Checkbox | None = None
    settings_png: gr.File | None = None
    gallery: gr.Gallery | None = None
    picked_index: gr.State | None = None  # the gallery image last clicked (0: the first), for Send to Edit

    @property
    def checkpoint(self):
        return self.controls["checkpoint"]


def send_settings(cache: ModelCache, target: RequestTarget, target_checkpoint, *values):
    """Generate's settings into another tab: its controls, its `sent` state (read by the checkpoint change the sending
    causes; None when the checkpoint stays), the tab selected, and a status line naming what could not go as it was."""
    try:
        request = generate_request_fields(*values)
        model = cache.get(request.checkpoint)
    except RequestError as error:
        raise user_error(error) from None
    if model.kind != "denoiser":
        raise user_error(f"{target.name} studies samplers, and {request.checkpoint} is a {model.kind} without one; "
                         f"choose a diffusion or flow model")
    fields = asdict(request)
    values, notes = sent_values(target, fields)
    sent = fields if target_checkpoint != request.checkpoint else None
    status = f"Settings sent to **{target.name}**" + (": " + "; ".join(notes) + "." if notes else ".")
    arrived = (f"Settings from Generate ({markdown_text(request.checkpoint)}, seed {request.seed})"
               + (": " + "; ".join(notes) if notes else "") + f". Press **{target.button}**.")
    return (sent, *values, gr.Tabs(selected=target.tab), status, arrived)


def send_to(cache: ModelCache, generate: GenerateTab, target: RequestTarget, tabs: gr.Tabs) -> None:
    """Wire Generate's "Send to" button for `target`."""
    generate.send_buttons[target.tab].click(
        partial(send_settings, cache, target), [target.controls["checkpoint"], *generate.inputs],
        [target.sent, *target.controls.values(), tabs, generate.status, target.note], api_name=False)


def settings_column(default_model, classes, guidance_choices, guidance_default, default_few_step) -> dict:
    """The left column: class, guidance, seed, images, sampler and its settings, the guidance methods,
    self-conditioning and the PNG drop; by name."""
    w = {}
    w["class_index"] = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="Class")
    w["guidance"] = gr.Radio(guidance_choices, value=guidance_default, label="Guidance")
    w["scale"] = gr.Slider(0, 15, value=APP_GUIDANCE["scale"], step=0.25, label="Guidance scale w",
                           interactive=guidance_default != "none")
    w["temperature"] = gr.Slider(0, MAX_TEMPERATURE, value=1.0, step=0.05, visible=False,
                                 label="Temperature T (z ~ N(0, T^2 I); below 1: smoother, less varied)")
    with gr.Row(equal_height=True):
        w["seed"] = gr.Number(value=0, precision=0, label="Seed", minimum=0, scale=3)
        w["dice"] = gr.Button("Random seed", size="sm", scale=1)
    w["batch_size"] = gr.Slider(1, MAX_BATCH, value=16, step=1, label="Images")
    w["live"] = gr.Checkbox(False, label="Live: regenerate at once when the class, scale or seed changes",
                            info="for few-step models; the newest change wins, stale ones are dropped",
                            visible=default_few_step)
    w["sampler"] = gr.Radio(SAMPLER_LABELS, value=APP_SAMPLING["sampler"], label="Sampler")
    w["solver"] = gr.Dropdown(list(ODE_SOLVERS), value=APP_SAMPLING["solver"], label="ODE solver",
                              visible=APP_SAMPLING["sampler"] == "ode")
    w["steps"] = gr.Slider(1, MAX_STEPS, value=APP_SAMPLING["steps"], step=1, label="Steps")
    w["eta"] = gr.Slider(0, 1, value=0.0, step=0.05, label="DDIM eta (0 = deterministic, 1 = DDPM-like)",
                         visible=APP_SAMPLING["sampler"] == "ddim")
    w["stochastic"] = stochastic_sampler_controls(APP_SAMPLING["sampler"])
    w["spacing"] = gr.Radio(SPACING_LABELS, value="uniform", label="Time spacing")
    w["methods_box"], w["methods"] = guidance_method_controls(DEFAULT_METHOD)
    w["self_condition"] = self_condition_control(default_model)
    with gr.Accordion("Load settings from a PNG made here", open=False):
        w["settings_png"] = gr.File(label="Drop a grid or an image this app saved", file_types=[".png"],
                                    type="filepath")
    return w


def results_column(cache: ModelCache, evaluation_dir: Path, default, default_model) -> dict:
    """The right column: the previews, the gallery, the clicked image, the download, "Send to", the history and the
    model card; by name."""
    w = {}
    w["preview"] = gr.Image(label=PREVIEW_LABEL[default_model.kind if default_model else "denoiser"], format="png",
                            interactive=False, height=320, visible=False)
    w["gallery"] = gr.Gallery(label="Images (click one for its seed and noise index)", columns=8, format="png",
                              height="auto", interactive=False, elem_id="images")
    w["picked"] = gr.Markdown(label="The image clicked")
    w["download"] = gr.File(label="Download PNG grid", interactive=False)
    # Above its buttons, not in their row: there Gradio gave it a 0 px wide cell (a Markdown's min_width is not
    # applied), where it stood one letter per line, a 455 px blank gap above the History.
    gr.Markdown("Send these settings to:")
    with gr.Row():
        w["send_buttons"] = {tab: gr.Button(name, size="sm") for tab, name in SEND_TARGETS.items()}
    # after-settings: on a phone the History and the card come after the settings (app.PAGE_CSS)
    with gr.Accordion("History (kept in this browser, newest first; click a run to restore it)", open=True,
                      elem_classes="after-settings"):
        # No label over the tiles (it covered their tops); the accordion's title says what they are.
        w["history_gallery"] = gr.Gallery(label="Runs, newest first (each by its first image)", columns=8,
                                          height=260, format="png", allow_preview=False, object_fit="contain",
                                          show_label=False, elem_id="history")
    w["card"] = gr.Markdown(model_summary(cache, evaluation_dir, default) if default else "", elem_classes="after-settings")
    return w


def on_gallery_select(event: gr.SelectData):  # a plain function: Gradio passes SelectData by annotation
    return event.index


def wire_runs(cache: ModelCache, sampling: dict, w: dict, inputs: list) -> tuple:
    """Generate (a denoiser), Generate (a normalizing flow) and live mode, each settled (Stop, failures), and the
    seed's dice and the gallery's clicks. Returns (the denoiser's run event, the flow's, the picked image's state)."""
    shown = [w["gallery"], w["preview"], w["status"], w["download"]]
    generating = w["run"].click(partial(generate, cache), inputs, shown, api_name="generate", show_progress="minimal",
                                show_progress_on=[w["status"]], **sampling)
    settle_run(generating, shown, w["status"], w["stop"])
    rolled = w["dice"].click(random_seed, None, w["seed"], api_name=False, queue=False)
    w["gallery"].select(picked_image, None, w["picked"], api_name=False)
    picked_index = gr.State(0)
    w["gallery"].select(on_gallery_select, None, picked_index, api_name=False)
    # /generate_flow reads its own (hidden) checkpoint, which follows the picker to flows only: its API default is a
    # flow, where the shared picker's default is a denoiser that it would refuse.
    flows = cache.names("normalizing-flow")
    w["flow_checkpoint"] = gr.Dropdown(flows, value=flows[0] if flows else None, visible=False,
                                       allow_custom_value=True, label="Normalizing flow")
    decoding = w["run_flow"].click(partial(generate_flow, cache),
                                   [w["flow_checkpoint"], w["class_index"], w["temperature"], w["seed"],
                                    w["batch_size"]], shown, api_name="generate_flow", **sampling)
    settle_run(decoding, shown, w["status"])
    # Live mode follows the user's changes (.input) and the dice, not the values a restore or a checkpoint sets:
    # a history click used to queue a skipped live event per restored control (issue 37, item 6).
    for trigger in (w["live"].input, w["class_index"].input, w["scale"].input, w["seed"].input, rolled.then):
        regenerating = trigger(partial(generate_live, cache), [w["live"], *inputs], shown, api_name=False,
                               trigger_mode="always_last", show_progress="hidden", **sampling)
        settle_run(regenerating, shown, w["status"])
    return generating, decoding, picked_index


def wire_follow_ups(demo: gr.Blocks, cache: ModelCache, evaluation_dir: Path, default, w: dict, inputs: list,
                    runs: tuple):
    """What follows the controls: the sampler's own settings, a checkpoint's kind and defaults, the estimate line,
    and the history (a finished run joins it; a click restores it). Returns the `loaded` state."""
    generating, decoding, picked_index = runs
    # Outside the queue (queue=False): the sampler's own settings and the estimate line are instant and run no model,
    # so a restore (which changes many controls at once) queues only its click, not one event per control.
    w["sampler"].change(partial(sampler_controls, cache), [w["sampler"], w["checkpoint"]],
                        [w["solver"], w["eta"], *w["stochastic"]], api_name=False, queue=False)
    few_step = gr.State(w["default_few_step"])
    loaded = gr.State(None)  # a PNG's request fields until the checkpoint change they cause has restored them
    w["checkpoint"].change(
        partial(on_checkpoint_change, cache, evaluation_dir),
        [w["checkpoint"], w["sampler"], few_step, loaded, w["class_index"]],
        [w[k] for k in ("class_index", "self_condition", "guidance", "card", "sampler", "solver", "steps", "eta",
                        "spacing", "scale", "temperature", "run", "run_flow", "live")]
        + [few_step, w["flow_checkpoint"], loaded, w["methods_box"], *w["stochastic"]]
        + [w[k] for k in ("gallery", "preview", "status", "download")], api_name=False)
    w["next_run"].value = estimate(cache, *(control.value for control in inputs)) if default else ""
    # One event for every control, so one estimate runs at a time and the last values' answer is the one shown:
    # with an event per control, two quick changes ran side by side and the older answer could land last (issue 37).
    runs_done = gr.State(0)  # after a run (the estimate then knows the model's measured call cost)
    changed = (*(w[k] for k in ("checkpoint", "sampler", "solver", "steps", "guidance", "batch_size")),
               *w["methods"], *w["stochastic"], runs_done)
    gr.on([control.change for control in changed], partial(estimate, cache), inputs, w["next_run"], api_name=False,
          show_progress="hidden", trigger_mode="always_last", preprocess=False, queue=False)  # raw: its own sentence
    # The runs' settings in this browser's localStorage: a reload (or a restarted server) shows the same list.
    history = gr.BrowserState([], storage_key=HISTORY_KEY, secret=HISTORY_CIPHER)
    demo.load(show_history, history, [history, w["history_gallery"]], api_name=False, show_progress="hidden")
    for run_event in (generating, decoding):
        run_event.success(add_to_history, [history, w["download"], w["gallery"]], [history, w["history_gallery"]],
                          api_name=False, show_progress="hidden")
        run_event.success(lambda: 0, None, picked_index, api_name=False, show_progress="hidden")  # a new run's first
    generating.success(count_run, runs_done, runs_done, api_name=False, show_progress="hidden", queue=False)

    def on_history_select(history, event: gr.SelectData):  # a plain function: Gradio passes SelectData by annotation
        return restore_run(cache, history, event)

    w["history_gallery"].select(on_history_select, history,
                                [*inputs, w["temperature"], w["status"], loaded, w["gallery"], w["download"]],
                                api_name=False)
    return loaded


REQUEST_CONTROLS = ("checkpoint", "sampler", "solver", "steps", "eta", "spacing", "guidance", "class_index", "scale",
                    "self_condition", "seed", "batch_size")  # generate_request's order, then the methods and SDE's


def build_generate_tab(demo: gr.Blocks, cache: ModelCache, evaluation_dir: Path, generative, default, classes,
                       guidance_choices, guidance_default, sampling: dict):
    """The tab's widgets and events; call inside `with gr.Tab(...)`. Returns the GenerateTab."""
    default_model = cache.get(default) if default else None
    default_few_step = bool(default_model and default_model.kind == "denoiser" and default_model.sampling_defaults)
    w = {"default_few_step": default_few_step}
    with gr.Row(equal_height=True):  # what a newcomer needs first, on top at any width: the model and the button
        w["checkpoint"] = gr.Dropdown(generative, value=default, label="Checkpoint", scale=3, min_width=280)
        w["run"] = gr.Button("Generate", variant="primary", scale=2)
        w["run_flow"] = gr.Button("Generate", variant="primary", visible=False, scale=2)  # normalizing flows
        w["stop"] = gr.Button("Stop", variant="stop", scale=1)
    w["next_run"] = gr.Markdown(label="Next run", elem_id="next-run")
    w["status"] = gr.Markdown("Press **Generate**.", label="Status")  # up here, so progress shows where the button is
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            w |= settings_column(default_model, classes, guidance_choices, guidance_default, default_few_step)
        with gr.Column(scale=2, elem_classes="results-first"):  # above the settings on a phone (app.PAGE_CSS)
            w |= results_column(cache, evaluation_dir, default, default_model)
    inputs = [w[name] for name in REQUEST_CONTROLS] + [*w["methods"], *w["stochastic"]]
    runs = wire_runs(cache, sampling, w, inputs)
    loaded = wire_follow_ups(demo, cache, evaluation_dir, default, w, inputs, runs)
    return GenerateTab("generate", "Generate", dict(zip(REQUEST_CONTROLS, inputs)), {}, loaded, inputs=inputs,
                       status=w["status"], send_buttons=w["send_buttons"], temperature=w["temperature"], live=w["live"],
                       settings_png=w["settings_png"], gallery=w["gallery"], picked_index=runs[2])
