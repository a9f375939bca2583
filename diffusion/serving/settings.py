"""A request inside a PNG, and back: the one place that writes and reads an image's settings.

Two text chunks, as AUTOMATIC1111 and the tools that read its files expect, plus the exact request:

    parameters            "Sneaker\\nSteps: 50, Sampler: ddim, CFG scale: 3, Seed: 0, Size: 28x28, Model hash: dca8643eb6,
                           Model: fashion-diffusion, ..."   (readable; A1111's first line is the prompt, ours the class)
    diffusion-playground  {"format": "diffusion-playground/request-1", "kind": "sample" | "flow",
                           "request": {every SampleRequest / FlowRequest field}, "checkpoint_sha256": "..."}

Reading uses only the JSON chunk (the readable one is for people): its fields are checked against the request
type, unknown ones refused, and the text is bounded before it is parsed. `settings_problems` checks the values with the
engine's own checks (check_request), one sentence per bad field, before the app puts any of them into a control.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

from PIL import PngImagePlugin

from .engine import MAX_SEED, FlowRequest, RequestError, SampleRequest, check_request
from ..formats.images import open_picture
from ..formats.jsonsafe import load_json

CHUNK = "diffusion-playground"
FORMAT = "diffusion-playground/request-1"
MAX_CHUNK_CHARS = 20_000  # a request is well under 2 KB
KINDS = {"sample": SampleRequest, "flow": FlowRequest}


def readable_parameters(request: SampleRequest | FlowRequest, class_names=(), sha256: str = "",
                        image_size: int | None = None) -> str:
    """AUTOMATIC1111's `parameters` text: the class on the first line, then `Key: value` pairs."""
    index = request.class_index
    prompt = "no class" if index is None else class_names[index] if 0 <= index < len(class_names) else f"class {index}"
    pairs = {}
    if isinstance(request, SampleRequest):
        pairs |= {"Steps": request.steps, "Sampler": request.sampler + (f" {request.solver}" if request.sampler == "ode" else ""),
                  "Guidance": request.guidance}
        if request.guidance != "none":
            pairs["CFG scale" if request.guidance == "cfg" else "Guidance scale"] = f"{request.scale:g}"
    else:
        pairs |= {"Steps": 1, "Sampler": "exact decode", "Temperature": f"{request.temperature:g}"}
    pairs |= {"Seed": request.seed, "Batch size": request.batch_size}
    if image_size:
        pairs["Size"] = f"{image_size}x{image_size}"
    if sha256:
        pairs["Model hash"] = sha256[:10]
    pairs["Model"] = request.checkpoint
    return f"{prompt}\n" + ", ".join(f"{key}: {value}" for key, value in pairs.items())


def png_info(request: SampleRequest | FlowRequest, class_names=(), sha256: str = "",
             image_size: int | None = None, study: dict | None = None) -> PngImagePlugin.PngInfo:
    """The two text chunks for PIL's save(..., pnginfo=...). `study`: a study tab's own settings beyond the request
    (its "tab" and, e.g., the sweep's scales or the X/Y grid's axes), so the picture reopens that tab as it was."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", readable_parameters(request, class_names, sha256, image_size))
    kind = "flow" if isinstance(request, FlowRequest) else "sample"
    data = {"format": FORMAT, "kind": kind, "request": asdict(request), "checkpoint_sha256": sha256}
    if study is not None:
        data["study"] = checked_study(study)
    info.add_text(CHUNK, json.dumps(data))
    return info


STUDY_TABS = ("generate", "compare", "sweep", "xy", "trajectory")
MAX_STUDY_FIELDS = 16


def checked_study(study) -> dict:
    """A study's settings as they may travel: a known tab, at most MAX_STUDY_FIELDS short fields of plain values."""
    if not isinstance(study, dict) or study.get("tab") not in STUDY_TABS or len(study) > MAX_STUDY_FIELDS:
        raise RequestError(f"a study's settings name one of the tabs {', '.join(STUDY_TABS)} and at most "
                           f"{MAX_STUDY_FIELDS} fields")
    plain = (str, int, float, bool, type(None))
    for key, value in study.items():
        items = value if isinstance(value, list) else [value]
        if not isinstance(key, str) or len(items) > 16 or not all(isinstance(v, plain) for v in items) \
                or any(isinstance(v, str) and len(v) > 1000 for v in items) \
                or any(isinstance(v, int) and not -MAX_SEED <= v <= MAX_SEED for v in items):  # JSON's 64-bit ints
            raise RequestError(f"the study setting {str(key)[:30]!r} is not a short plain value")
    return study


def settings_problems(cache, request: SampleRequest | FlowRequest) -> list[str]:
    """What is wrong with a request read from a PNG, one sentence per bad field, found by the checks every request
    passes (engine.check_request): a field is blamed when putting back its default changes the refusal. Empty: the
    request would run here. Every whole number is also bounded to JSON's 64 bits, so no value can break the stream
    that carries it to the page."""
    problems, kind = [], type(request)
    defaults = {f.name: f.default for f in fields(kind)}
    for _ in range(len(defaults)):
        try:
            check_request(cache, request)
            break
        except RequestError as error:
            sentence = str(error)
        except (TypeError, ValueError, ArithmeticError) as error:  # a value of a type no check expected
            sentence = f"the settings hold a value this app cannot use ({type(error).__name__})"
        if "checkpoint" in sentence and not problems and _checkpoint_refused(cache, request):
            return [sentence]  # no model to check the rest against
        blamed = None
        for name, default in defaults.items():
            if name == "checkpoint" or getattr(request, name) == default:
                continue
            trial = replace(request, **{name: default})
            try:
                check_request(cache, trial)
            except RequestError as other:
                if str(other) == sentence:
                    continue
            except (TypeError, ValueError, ArithmeticError):
                continue
            blamed = name
            break
        if blamed is None:
            if not problems:
                problems.append(sentence)
            break
        problems.append(sentence if blamed in sentence else f"{blamed}: {sentence}")
        request = replace(request, **{blamed: defaults[blamed]})
    for name, value in asdict(request).items():  # fields no check reads (first_index): JSON's 64 bits at least
        if isinstance(value, int) and not isinstance(value, bool) and not -MAX_SEED <= value <= MAX_SEED:
            problems.append(f"{name} must be a whole number of at most 2^63 - 1, got a {len(str(abs(value)))}-digit number")
    return problems


def _checkpoint_refused(cache, request) -> bool:
    """Whether the request's checkpoint itself is what the cache refuses (missing, unavailable, another kind)."""
    try:
        cache.get(request.checkpoint)
    except RequestError:
        return True
    neutral = type(request)(checkpoint=request.checkpoint)
    try:
        check_request(cache, neutral)
    except RequestError as error:
        return "checkpoint" in str(error) and "class" not in str(error)
    return False


def result_png_info(result, index: int | None = None) -> PngImagePlugin.PngInfo:
    """The chunks of a result's grid (index None: the whole request) or of its image `index` alone: a request of one
    image whose noise is that image's, so it regenerates the same pixels."""
    request = result.request
    if index is not None:
        request = replace(request, batch_size=1, first_index=int(request.first_index) + index)
    return png_info(request, result.class_names, result.checkpoint_sha256, int(result.images.shape[-1]))


def request_from_png(path) -> tuple[SampleRequest | FlowRequest, str]:
    """(the request, the checkpoint's SHA-256 it was made with) from a PNG this app wrote; RequestError otherwise."""
    return request_from_text(settings_text(path))


def study_from_png(path) -> dict | None:
    """The study settings a PNG carries beside its request (checked_study), or None for a plain request."""
    data = load_json(settings_text(path), "the PNG's settings")
    return checked_study(data["study"]) if isinstance(data, dict) and "study" in data else None


def settings_text(path) -> str:
    """The JSON chunk of a PNG this app wrote, read without decoding its pixels; RequestError otherwise."""
    try:
        with open_picture(Path(path)) as picture:  # PNG, JPEG, WebP and GIF decoders only
            kind = picture.format
            text = picture.info.get(CHUNK) if kind == "PNG" else None  # chunks before the pixels: none decoded
    except ValueError as error:  # not one of those, or a text-chunk bomb: a sentence each
        raise RequestError(str(error)) from None
    except OSError:
        raise RequestError("the file is not an image this app can read") from None
    if kind != "PNG":
        raise RequestError("settings travel in PNG files made by this app; this file is not a PNG")
    if text is None:
        raise RequestError("this PNG carries no diffusion-playground settings (it was not saved by this app)")
    if len(text) > MAX_CHUNK_CHARS:
        raise RequestError(f"the PNG's settings are {len(text):,} characters long; at most {MAX_CHUNK_CHARS:,}")
    return text


def request_from_text(text: str) -> tuple[SampleRequest | FlowRequest, str]:
    """The JSON chunk's request and checkpoint SHA-256, checked field by field."""
    if len(text) > MAX_CHUNK_CHARS:
        raise RequestError(f"the PNG's settings are {len(text):,} characters long; at most {MAX_CHUNK_CHARS:,}")
    try:
        data = load_json(text, "the PNG's settings")
    except ValueError as error:
        raise RequestError(str(error)) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("kind") not in KINDS:
        raise RequestError(f"the PNG's settings are not of format {FORMAT!r}")
    kind, values = KINDS[data["kind"]], data.get("request")
    if not isinstance(values, dict):
        raise RequestError("the PNG's settings hold no request")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RequestError(f"the PNG's settings have unknown fields {', '.join(str(u)[:30] for u in unknown[:5])}")
    sha256 = data.get("checkpoint_sha256", "")
    return kind(**values), sha256 if isinstance(sha256, str) else ""
