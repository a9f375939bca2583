"""Examples that show at once, and opening any PNG made here in the tab that made it.

An example is a PNG in docs/examples/ made by the tab's own handler: its pixels are the result, its settings chunk
(diffusion.serving.settings) the request and the tab's own settings. A click shows the picture at once and puts the settings
in their tab, as dropping any PNG made here does; pressing the tab's button makes the same pixels.

    python -m diffusion.app.examples [--out docs/examples] [--only NAME ...] [--overwrite]

remakes them from the shipped checkpoints (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import gradio as gr
from PIL import Image, PngImagePlugin

from ..serving.backend import backend_for
from ..serving.engine import ModelCache, RequestError, SampleRequest
from ..formats.images import labelled_rows
from ..formats.outputs import OutputExists, refuse_to_replace
from ..serving.settings import CHUNK, png_info, request_from_png, settings_problems, study_from_png
from .common import markdown_text, save_png, user_error
from .compare import compare
from .controls import RequestTarget, sent_values
from .generate import GenerateTab, load_settings
from .sweep import sweep
from .xy import xy_grid

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "docs" / "examples"


@dataclass(frozen=True)
class Example:
    name: str  # the PNG's file stem
    title: str
    tab: str
    arguments: tuple  # the tab handler's arguments after the model cache
    live: bool = False  # Generate: opens with live mode on


EXAMPLES = (
    Example("cfg-sweep", "A lecture's CFG sweep: Sneakers at w = 0, 1, 2, 4, 8", "sweep",
            ("fashion-diffusion", 7, "0, 1, 2, 4, 8", ["cfg"], 0, 8, "ddim", 25, "heun")),
    Example("same-noise-samplers", "DDPM, DDIM and the ODE on the same noise", "compare",
            ("fashion-diffusion", "cfg", 0, 3.0, 0, 8, "uniform", 100, 50, 0.0, 10, "dpm++2m", "ddim", "ode")),
    Example("instant-live", "The instant model in live mode: one network evaluation", "generate",
            ("fashion-instant", "ode", "euler", 1, 0.0, "uniform", "none", 0, 1.0, None, 0, 16), live=True),
    Example("reflow-live", "The reflow student in live mode: 2 Euler steps", "generate",
            ("fashion-reflow", "ode", "euler", 2, 0.0, "uniform", "none", 0, 1.0, None, 0, 16), live=True),
    Example("classic-ddim", "The classic: DDIM, 50 steps, CFG 3", "generate",
            ("fashion-diffusion", "ddim", "heun", 50, 0.0, "uniform", "cfg", 0, 3.0, None, 0, 16)),
    Example("class-by-scale", "X/Y grid: three classes by three guidance scales", "xy",
            ("fashion-diffusion", "ddim", "heun", 25, "uniform", "cfg", 0, 3.0, 0, 4, "scale", "1, 3, 6",
             "class_index", "1, 7, 8")),
)


def _last(generator):
    """The final outputs of a tab's generator handler (the ones before are progress and cancel points)."""
    outputs = None
    for outputs in generator:
        pass
    return outputs


def _quiet(*args, **kwargs):  # a progress callback outside Gradio
    return None


def make_example(cache: ModelCache, example: Example) -> tuple[Image.Image, PngImagePlugin.PngInfo]:
    """The example's picture and settings, made by its tab's own handler."""
    if example.tab == "sweep":
        path = _last(sweep(cache, *example.arguments, progress=_quiet))[0]
        return _with_settings(path)
    if example.tab == "xy":
        path = _last(xy_grid(cache, *example.arguments, progress=_quiet))[2]
        return _with_settings(path)
    if example.tab == "compare":
        outputs = _last(compare(cache, *example.arguments, progress=_quiet))
        columns = [Image.open(path) for path in outputs[:3]]
        labels = [text.replace("**", "").split(":")[0] for text in outputs[3:6]]
        _, info = _with_settings(outputs[1])  # the DDIM column's request, with the comparison's step counts
        return labelled_rows(columns, labels), info
    (checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale, self_condition, seed,
     batch_size) = example.arguments
    request = SampleRequest(checkpoint=checkpoint, sampler=sampler, solver=solver, steps=steps, eta=eta,
                            spacing=spacing, guidance=guidance, class_index=class_index, scale=scale,
                            self_condition=self_condition, seed=seed, batch_size=batch_size)
    result = backend_for(cache).run_request(request)
    path = save_png(result.images, 8, "example", png_info(request, result.class_names, result.checkpoint_sha256,
                                                          int(result.images.shape[-1]),
                                                          {"tab": "generate", "live": example.live}))
    return _with_settings(path)


def _with_settings(path) -> tuple[Image.Image, PngImagePlugin.PngInfo]:
    """A PNG's picture and its text chunks, to save elsewhere unchanged."""
    picture = Image.open(path)
    info = PngImagePlugin.PngInfo()
    for key in ("parameters", CHUNK):
        info.add_text(key, picture.info[key])
    return picture, info


def write_examples(cache: ModelCache, out: Path, names=(), overwrite: bool = False) -> list[Path]:
    chosen = [e for e in EXAMPLES if not names or e.name in names]
    unknown = set(names) - {e.name for e in EXAMPLES}
    if unknown:
        raise SystemExit(f"unknown example {sorted(unknown)[0]!r}; choose from {', '.join(e.name for e in EXAMPLES)}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for example in chosen:
        path = out / f"{example.name}.png"
        refuse_to_replace(path, overwrite)
        picture, info = make_example(cache, example)
        picture.save(path, pnginfo=info)
        written.append(path)
    return written


# --- in the app ---------------------------------------------------------------------------------
def example_files(cache: ModelCache, folder: Path = EXAMPLES_DIR) -> list[tuple[str, str]]:
    """(path, title) of the examples whose PNG is there and whose checkpoint the cache serves, in EXAMPLES order."""
    served = set(cache.names("denoiser", "normalizing-flow"))
    found = []
    for example in EXAMPLES:
        path = folder / f"{example.name}.png"
        if path.is_file() and example.arguments[0] in served:
            found.append((str(path), example.title))
    return found


def open_png(cache: ModelCache, generate: GenerateTab, studies: list[RequestTarget], path) -> tuple:
    """A PNG made here, opened in the tab that made it: Generate's controls (as Load settings fills them), or a study
    tab's controls and its own settings (the sweep's scales, the grid's axes), then the tab selected. Outputs:
    load_settings' outputs, each study's (sent, *controls, note), live mode, the tabs."""
    request, study = checked_settings(cache, path)  # before any control is set
    *generate_values, status, loaded = load_settings(cache, path)
    skip = lambda count: [gr.skip()] * count  # noqa: E731
    target = next((t for t in studies if t.tab == study["tab"]), None)
    if target is None:  # Generate
        study_values = [value for t in studies for value in skip(2 + len(t.controls))]
        loaded["live"] = bool(study.get("live", False))  # kept by the checkpoint change this may cause
        return (*generate_values, status, loaded, *study_values, loaded["live"],
                gr.Tabs(selected="generate"))
    fields = asdict(request)
    status = (f"Opened in **{target.name}**: {markdown_text(request.checkpoint)}, seed {request.seed}. Press "
              f"**{target.button}** there for the same pixels.")
    study_values = []
    for other in studies:
        if other is target:
            values, _ = sent_values(target, fields, study)  # the PNG's own tab takes its values as they are
            study_values += [fields, *values, f"Settings loaded from a PNG ({markdown_text(request.checkpoint)}, "
                                              f"seed {request.seed}): press **{target.button}** for the same pixels."]
        else:
            study_values += skip(2 + len(other.controls))
    return (*skip(len(generate_values)), status, gr.skip(), *study_values, gr.skip(), gr.Tabs(selected=target.tab))


def checked_settings(cache: ModelCache, file) -> tuple:
    """A PNG's request and study settings, checked as any request is (settings_problems): a refusal lists one sentence
    per bad field, and nothing reaches a control (a seed of 10^30 once broke the session's stream while being sent)."""
    path = file.get("path") if isinstance(file, dict) else file
    try:
        if not isinstance(path, str):
            raise RequestError("drop a PNG that this app (or `python -m diffusion sample`) saved")
        request, _ = request_from_png(path)
        problems = settings_problems(cache, request)
        study = study_from_png(path) or {"tab": "generate"}
    except RequestError as error:
        raise user_error(error) from None
    if problems:
        raise user_error("this PNG's settings cannot be used here: " + " ".join(
            p if p.endswith(".") else p + "." for p in problems))
    return request, study


def open_example(cache: ModelCache, generate: GenerateTab, studies: list[RequestTarget], path: str) -> tuple:
    """An example's button: its picture at once, and its settings in its tab (open_png)."""
    return (gr.Image(value=path, visible=True), *open_png(cache, generate, studies, path))


def opening_outputs(generate: GenerateTab, studies: list[RequestTarget], tabs: gr.Tabs) -> list:
    """open_png's output components, in its order."""
    return [*generate.inputs, generate.temperature, generate.status, generate.sent,
            *(c for t in studies for c in (t.sent, *t.controls.values(), t.note)), generate.live, tabs]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR)
    parser.add_argument("--checkpoints", type=Path, default=EXAMPLES_DIR.parents[1] / "checkpoints")
    parser.add_argument("--only", nargs="*", default=[], metavar="NAME")
    parser.add_argument("--overwrite", action="store_true", help="replace existing example PNGs")
    args = parser.parse_args(argv)
    try:
        written = write_examples(ModelCache(args.checkpoints), args.out, args.only, args.overwrite)
    except (OutputExists, RequestError) as error:
        raise SystemExit(f"examples: {error}") from None
    print("\n".join(str(path) for path in written))


if __name__ == "__main__":
    main()
