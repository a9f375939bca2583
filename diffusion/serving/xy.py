"""The X/Y grid: any request field on each axis, a typed list of values for each, the same noise in every cell.

Values follow AUTOMATIC1111's X/Y plot syntax: `1, 2, 4`; ranges `1-8` (step 1), `1-8 (+2)` (step 2), `0-1 [5]`
(5 evenly spaced values). Every cell is checked before any sampling starts, and the work (cells x images x network
evaluations) is bounded so that a grid stays interactive on a CPU.
"""

from __future__ import annotations

import functools
import math
import platform
import re
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from .engine import (ModelCache, RequestError, SampleRequest, SampleResult, check_request, check_work, class_index_of,
                     run_request)
from ..core.metrics import sharpness
from ..formats.data import DataError, load_fashion_mnist, to_model_range
from ..formats.images import display_scale, image_grid, to_pil
from .studies import class_confidence_and_diversity

MAX_AXIS_VALUES = 8
MAX_CELLS = 36
AXIS_FIELDS = ("checkpoint", "sampler", "solver", "steps", "eta", "stochasticity", "predictor", "correctors", "snr",
               "langevin_steps", "step_size", "spacing", "guidance", "guide", "scale", "rescale", "interval_low",
               "interval_high", "apg_eta", "apg_norm", "apg_momentum", "threshold", "class_index", "seed",
               "self_condition")
# What a person reads for each field, on the dropdowns, the grid's labels and the table (the values stay the API's).
AXIS_LABELS = {"checkpoint": "checkpoint", "sampler": "sampler", "solver": "ODE solver", "steps": "steps",
               "eta": "DDIM eta", "stochasticity": "SDE stochasticity", "predictor": "PC predictor",
               "correctors": "PC corrector steps", "snr": "PC corrector SNR", "langevin_steps": "Langevin steps per level",
               "step_size": "Langevin step size", "spacing": "time spacing", "guidance": "guidance",
               "guide": "autoguidance guide", "scale": "guidance scale w", "rescale": "CFG rescale phi",
               "interval_low": "guidance from log-SNR", "interval_high": "guidance to log-SNR", "apg_eta": "APG eta",
               "apg_norm": "APG norm bound r", "apg_momentum": "APG momentum beta",
               "threshold": "thresholding percentile", "class_index": "class", "seed": "seed",
               "self_condition": "self-conditioning"}
MAX_AXIS_TEXT = 1000  # characters in one axis box (8 values need far fewer); longer text is refused unread
_INTEGER = re.compile(r"[-+]?[0-9]+")  # no nested quantifier: matching is linear in the text's length


def field_kind(name: str):
    """The Python type of a SampleRequest field that may go on an axis."""
    if name not in AXIS_FIELDS:
        raise RequestError(f"{name!r:.40} cannot go on an axis; choose one of {', '.join(AXIS_FIELDS)}")
    kinds = {"int": int, "float": float, "str": str, "bool": bool}
    annotation = {f.name: f.type for f in fields(SampleRequest)}[name]
    return kinds[str(annotation).split(" ")[0].split("|")[0].strip()]


def parse_axis(name: str, text: str, class_names=()) -> list:
    """An axis' typed values from A1111-style text; RequestError with the offending item otherwise. Linear in the
    text's length (split by hand, no backtracking pattern), and the text is bounded before it is read. A class is
    typed by its index or by its name in `class_names` (any case)."""
    kind = field_kind(name)
    text = str(text)
    if len(text) > MAX_AXIS_TEXT:
        raise RequestError(f"the {name} axis is {len(text):,} characters long; at most {MAX_AXIS_TEXT:,}")
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise RequestError(f"give at least one value for {name}")
    values = []
    for item in items:
        values.extend(_parse_item(name, kind, item, class_names))
        if len(values) > MAX_AXIS_VALUES:
            raise RequestError(f"at most {MAX_AXIS_VALUES} values per axis ({name} has more)")
    return values


def _parse_item(name: str, kind, item: str, class_names=()) -> list:
    if kind is str:
        return [item]
    if kind is bool:
        truth = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False, "0": False}
        if item.lower() not in truth:
            raise RequestError(f"{name} takes true or false, got {item!r:.40}")
        return [truth[item.lower()]]
    if item.lower() == "none" and name in ("interval_low", "interval_high", "class_index"):
        return [None]
    if name == "class_index" and class_names and not item[:1].isdigit():
        return [class_index_of(item, class_names)]  # a class by name, any case (an index or a range is a number)
    try:
        return _parse_numbers(name, kind, item)
    except OverflowError:
        raise RequestError(f"{name}: {item[:40]!r} holds a number too large to use") from None


def _parse_numbers(name: str, kind, item: str) -> list:
    bounds, step, count = _split_range(name, item)
    if bounds is None:
        return [_number(name, kind, item)]
    start, stop = (_number(name, kind, text) for text in bounds)
    if count is not None:
        count = _number(name + " (range count)", int, count)
        if not 1 <= count <= MAX_AXIS_VALUES:
            raise RequestError(f"{name}: a range takes 1 to {MAX_AXIS_VALUES} values, got [{count}]")
        numbers = [start] if count == 1 else [start + (stop - start) * i / (count - 1) for i in range(count)]
        return [_typed(name, kind, round(number, 10)) for number in numbers]
    if step is None and kind is not int:
        raise RequestError(f"{name}: a range of decimals needs a step or a count, e.g. {item[:40]} (+0.5) or {item[:40]} [5]")
    step = 1 if step is None else _number(name + " (range step)", kind, step)
    span = (stop - start) / step if step else -1.0
    if not math.isfinite(span) or span < 0:
        raise RequestError(f"{name}: step {step:g} never gets from {start:g} to {stop:g}")
    n = math.floor(span + 1e-9) + 1
    if n > MAX_AXIS_VALUES:
        raise RequestError(f"at most {MAX_AXIS_VALUES} values per axis ({name}: {item[:40]} has {n:,})")
    return [_typed(name, kind, start + i * step if kind is int else round(start + i * step, 10)) for i in range(n)]


def _split_range(name: str, item: str):
    """'A-B', 'A-B (+S)' or 'A-B [N]' -> ((A, B), S or None, N or None); a plain number -> (None, None, None).

    The '-' between A and B is the first one that is neither a leading sign nor an exponent's sign, so negative
    bounds read as expected (-5--3, 1e-3-1e-2)."""
    step = count = None
    if item.endswith(")") and "(" in item:
        item, step = item[:item.rindex("(")].strip(), item[item.rindex("(") + 1:-1].strip()
        step = step[1:].strip() if step.startswith("+") else step
    elif item.endswith("]") and "[" in item:
        item, count = item[:item.rindex("[")].strip(), item[item.rindex("[") + 1:-1].strip()
    dash = next((i for i in range(1, len(item)) if item[i] == "-" and item[i - 1] not in "eE+-"), None)
    if dash is None:
        if step is not None or count is not None:
            raise RequestError(f"{name}: {item[:40]!r} before {'(+step)' if step is not None else '[count]'} is not a "
                               f"range like 1-8")
        return None, None, None
    return (item[:dash].strip(), item[dash + 1:].strip()), step, count


def _number(name: str, kind, text: str):
    """One number as the field's type: whole numbers are parsed as integers (exact, however large), never via float."""
    if kind is int and _INTEGER.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        raise RequestError(f"{name}: {text[:40]!r} is neither a number nor a range like 1-8 (+2) or 0-1 [5]") from None
    return _typed(name, kind, number)


def _typed(name: str, kind, number):
    if isinstance(number, float) and not math.isfinite(number):
        raise RequestError(f"{name} must be a finite number")
    if kind is int:
        if isinstance(number, float) and not number.is_integer():
            raise RequestError(f"{name} takes whole numbers, got {number:g}")
        return int(number)
    return float(number)


@dataclass
class XYCell:
    x: object
    y: object
    result: SampleResult
    confidence: float | None  # evaluator's mean probability of the requested class
    diversity: float  # mean pairwise evaluator-feature distance over the cell's images
    accuracy: float | None = None  # share of the cell's images the evaluator assigns to the requested class
    sharpness: float = 0.0  # core.metrics.sharpness of the cell's images (a blur lowers it)


@dataclass
class XYPlan:
    x_field: str
    x_values: list
    y_field: str  # "" for a single row
    y_values: list
    requests: list  # rows of cells: requests[y][x]


def plan_grid(cache: ModelCache, base: SampleRequest, x_field: str, x_text: str, y_field: str = "",
              y_text: str = "") -> XYPlan:
    """Every cell's request, checked (and the work bounded) before any sampling starts."""
    class_names = cache.get(base.checkpoint).class_names
    x_values = parse_axis(x_field, x_text, class_names)
    if y_field:
        if y_field == x_field:
            raise RequestError(f"X and Y are both {x_field}; choose two different fields")
        y_values = parse_axis(y_field, y_text, class_names)
    else:
        y_values = [None]
    if len(x_values) * len(y_values) > MAX_CELLS:
        raise RequestError(f"{len(x_values)} x {len(y_values)} = {len(x_values) * len(y_values)} cells; at most {MAX_CELLS}")
    requests = [[replace(base, **{x_field: x}, **({y_field: y} if y_field else {})) for x in x_values]
                for y in y_values]
    plan = XYPlan(x_field, x_values, y_field, y_values, requests)
    for y, row in zip(y_values, requests):  # every cell valid first: the work of an unknown sampler is not defined
        for x, request in zip(x_values, row):
            try:
                check_request(cache, request)
            except RequestError as error:
                where = f"{x_field}={value_label(x)[:40]}" + (f", {y_field}={value_label(y)[:40]}" if y_field else "")
                raise RequestError(f"cell {where}: {error}") from None
    check_work(cache, [r for row in requests for r in row], "this grid")  # the one budget every endpoint has
    return plan


@functools.lru_cache(maxsize=4)
def real_sharpness(image_shape: tuple[int, int, int], images: int = 1000) -> float | None:
    """core.metrics.sharpness of the first `images` Fashion-MNIST test images, the reference beside a cell's; None
    when those images are not what the cells show (another shape) or the data set is not installed."""
    if tuple(image_shape) != (1, 28, 28):
        return None
    try:
        test = load_fashion_mnist("test")
    except (DataError, OSError):
        return None
    return sharpness(to_model_range(test.images[:images]))


def distilled_from(cache: ModelCache, model) -> str | None:
    """The checkpoint an adversarially distilled student was fine-tuned from (its file's adversarial.start_from, a
    path whose stem names it), when that checkpoint is served here; else None."""
    adversarial = model.config.get("adversarial")
    start_from = adversarial.get("start_from") if isinstance(adversarial, dict) else None
    name = Path(start_from).stem if isinstance(start_from, str) else None
    return name if name in cache.names("denoiser") else None


def few_step_plan(cache: ModelCache, student: str, steps_text: str, base: SampleRequest) -> XYPlan:
    """A reflow student and its teacher on the same noise, Euler steps along X: the teacher with the classifier-free
    guidance its pairs were made with, the student as it is (the pairs carry that guidance); for a student distilled
    from another (an instant model), that reflow student too, as it is."""
    model = cache.get(student)
    reflow = model.config.get("reflow") if model.kind == "denoiser" else None
    if not isinstance(reflow, dict):
        raise RequestError(f"{student!r:.60} is not a reflow student: its file names no teacher")
    teacher, scale = reflow.get("teacher_name"), reflow.get("scale", 1.0)
    if not isinstance(teacher, str) or teacher not in cache.names("denoiser"):
        raise RequestError(f"{student!r:.60}'s teacher {teacher!r:.60} is not among the checkpoints")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale <= 20:
        raise RequestError(f"{student!r:.60} records an unusable guidance scale {scale!r:.20}")
    steps = parse_axis("steps", steps_text)
    euler = replace(base, sampler="ode", solver="euler", spacing="uniform")
    rows = [replace(euler, checkpoint=teacher, guidance="cfg" if scale != 1 else "none", scale=float(scale)),
            replace(euler, checkpoint=student, guidance="none", scale=1.0)]
    labels = [f"{teacher} (teacher, CFG {scale:g})", f"{student} (student)"]
    started_from = distilled_from(cache, model)
    if started_from:  # an adversarially distilled student: the reflow student it was fine-tuned from, between them
        rows.insert(1, replace(euler, checkpoint=started_from, guidance="none", scale=1.0))
        labels.insert(1, f"{started_from} (reflow student it started from)")
    rows = [replace(r, self_condition=cache.get(r.checkpoint).self_condition) for r in rows]
    plan = XYPlan("steps", steps, "checkpoint", labels, [[replace(r, steps=n) for n in steps] for r in rows])
    for row in plan.requests:
        for request in row:
            check_request(cache, request)
    check_work(cache, [r for row in plan.requests for r in row], "this comparison")
    return plan


def run_grid(cache: ModelCache, plan: XYPlan, progress=None) -> list[list[XYCell]]:
    """Sample every cell (rows of XYCell); progress(cell, cells, done, total) per network evaluation."""
    evaluator = cache.first_of_kind("evaluator")
    count = len(plan.x_values) * len(plan.y_values)
    rows = []
    for j, (y, row) in enumerate(zip(plan.y_values, plan.requests)):
        cells = []
        for i, (x, request) in enumerate(zip(plan.x_values, row)):
            index = j * len(plan.x_values) + i
            step_progress = (lambda done, total, k=index: progress(k, count, done, total)) if progress else None
            result = run_request(cache, request, progress=step_progress)
            confidence, accuracy, diversity = class_confidence_and_diversity(evaluator, result.images,
                                                                             request.class_index)
            cells.append(XYCell(x, y, result, confidence, diversity, accuracy, sharpness(result.images)))
        rows.append(cells)
    return rows


def value_label(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def axis_value(field: str, value, class_names=()) -> str:
    """A cell's value as a person reads it: a class by its name, a number as typed."""
    if field == "class_index" and isinstance(value, int) and 0 <= value < len(class_names):
        return class_names[value]
    if field == "class_index" and value is None:
        return "no class"
    return value_label(value)


def axis_text(field: str, value, class_names=()) -> str:
    return f"{AXIS_LABELS.get(field, field)} = {axis_value(field, value, class_names)}"


def grid_picture(plan: XYPlan, cells: list[list[XYCell]], columns: int, target_px: int = 64) -> Image.Image:
    """All cells as one labelled picture: X values over the columns, Y values beside the rows."""
    tiles = [[to_pil(image_grid(c.result.images, columns),
                     scale=display_scale(c.result.images.shape[-1], target_px)) for c in row] for row in cells]
    names = cells[0][0].result.class_names
    font = ImageFont.load_default()
    tile_w = max(t.width for row in tiles for t in row)
    tile_h = max(t.height for row in tiles for t in row)
    pad, top = 6, 34
    left = 10 + max((len(axis_text(plan.y_field, y, names)) for y in plan.y_values), default=0) * 6 if plan.y_field else pad
    width = left + len(plan.x_values) * (tile_w + pad)
    height = top + len(plan.y_values) * (tile_h + pad)
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    for i, x in enumerate(plan.x_values):
        draw.text((left + i * (tile_w + pad), 8), axis_text(plan.x_field, x, names)[:tile_w // 6], fill="black", font=font)
    for j, (y, row) in enumerate(zip(plan.y_values, tiles)):
        y0 = top + j * (tile_h + pad)
        if plan.y_field:
            draw.text((4, y0 + tile_h // 2 - 6), axis_text(plan.y_field, y, names), fill="black", font=font)
        for i, tile in enumerate(row):
            picture.paste(tile.convert("RGB"), (left + i * (tile_w + pad), y0))
    return picture


def grid_manifest(cache: ModelCache, plan: XYPlan, cells: list[list[XYCell]]) -> dict:
    """Everything needed to reproduce the grid: each cell's full request, the checkpoints' SHA-256, and its figures."""
    names = sorted({c.result.request.checkpoint for row in cells for c in row})
    return {
        "what": "diffusion-playground X/Y grid",
        "x": {"field": plan.x_field, "values": plan.x_values},
        "y": {"field": plan.y_field, "values": plan.y_values} if plan.y_field else None,
        "checkpoints": {name: cache.get(name).sha256 for name in names},
        "cells": [{"x": c.x, "y": c.y, "request": asdict(c.result.request), "nfe": c.result.nfe,
                   "seconds": round(c.result.seconds, 3), "class_confidence": c.confidence,
                   "class_accuracy": c.accuracy, "sharpness": round(c.sharpness, 4),
                   "diversity": round(c.diversity, 4)} for row in cells for c in row],
        "noise": "image i uses a CPU torch.Generator seeded from sha256(f'{seed}:{i}') in every cell",
        "device": str(cache.device), "torch": torch.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
