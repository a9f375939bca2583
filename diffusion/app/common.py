"""Helpers every tab shares: tensors -> PIL images and files, errors a user can read, and a worker thread
that streams a backend call's progress events to a Gradio generator handler."""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path

import gradio as gr
import torch

from ..serving.engine import RequestError, SamplingError
from ..formats.images import display_scale, image_grid, to_pil
from ..serving.settings import result_png_info
from .outputs import OUTPUT_DIR, output_path, output_paths

# On-screen sizes in px that images are enlarged towards (nearest-neighbour, whole factors: 28 px -> x4, 3, 2;
# 256 px images are shown as they are).
SINGLE_PX, GRID_PX, EXPORT_PX = 112, 84, 56


# zlib level 1: sixteen 112 px grey samples encode in half the time of PIL's default level 6; the files are 12 % larger.
PNG_COMPRESS_LEVEL = 1


def pil_images(images: torch.Tensor, target_px: int = SINGLE_PX):
    """One PIL image per tensor image (grey or colour), enlarged towards target_px."""
    scale = display_scale(images.shape[-1], target_px)
    return [to_pil(image_grid(image[None], columns=1, padding=0), scale=scale) for image in images]


def grid_pil(images: torch.Tensor, columns: int, target_px: int = GRID_PX):
    """(N, C, H, W) in [-1, 1] -> one PIL grid (colour kept), each image enlarged towards target_px."""
    return to_pil(image_grid(images, columns), scale=display_scale(images.shape[-1], target_px))


def serve_outputs_directly(folder: Path = OUTPUT_DIR) -> None:
    """Gradio serves the output folder's files where they are: without this it hashes and copies every returned file
    into its own cache (16 gallery PNGs, the grid: about 30 ms of a reflow grid's 0.2 s round trip). The folder holds
    only files this app wrote, each written once, and keeps MAX_OUTPUT_FILES of them."""
    folder.mkdir(parents=True, exist_ok=True)
    from gradio.data_classes import _StaticFiles

    if folder.resolve() not in _StaticFiles.all_paths:  # one entry however many apps a process builds
        gr.set_static_paths([folder])


def save_png(images: torch.Tensor, columns: int, stem: str, pnginfo=None, target_px: int = EXPORT_PX) -> str:
    """A grid as a PNG in the output folder; `pnginfo` (settings.png_info) carries the request that made it."""
    return save_picture(grid_pil(images, columns, target_px), stem, pnginfo)


def save_picture(picture, stem: str, pnginfo=None) -> str:
    """A PIL picture as a PNG in the output folder (a file, so the browser downloads it with its settings)."""
    path = output_path(stem, ".png")
    picture.save(path, pnginfo=pnginfo, compress_level=PNG_COMPRESS_LEVEL)
    return path


def result_pngs(result, columns: int, stem: str) -> tuple[list[str], str]:
    """A result as files that carry their settings: one PNG per image (its own one-image request, so dropped back
    it regenerates those pixels) and the grid (the whole request)."""
    pictures = pil_images(result.images)
    *singles, grid = output_paths([f"{stem}-{index}" for index in range(len(pictures))] + [stem], ".png")
    for index, (picture, path) in enumerate(zip(pictures, singles)):
        picture.save(path, pnginfo=result_png_info(result, index), compress_level=PNG_COMPRESS_LEVEL)
    grid_pil(result.images, columns, EXPORT_PX).save(grid, pnginfo=result_png_info(result),
                                                     compress_level=PNG_COMPRESS_LEVEL)
    return singles, grid


def save_gif(frames, stem: str, duration_ms: int = 300) -> str:
    """PIL frames -> an endlessly looping GIF."""
    path = output_path(stem, ".gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return path


def widget_number(value, name: str, kind=float):
    """A widget or API value as a float or int, or a RequestError naming the field; ranges are the engine's job.

    One conversion for every endpoint: numbers and numeric strings pass; True, None, lists and words do not;
    2.5 is not a whole number (never truncated to 2); huge and non-finite values get a sentence, not a crash; an
    emptied box says so (it said "got 'None'")."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RequestError(f"{name} must be a number; the box is empty")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise RequestError(f"{name} must be a number, got {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number, got {str(value)[:40]!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{name} must be finite, got {value}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise RequestError(f"{name} must be a whole number, got {value}")
        return int(value)
    try:
        return float(value)
    except OverflowError:
        raise RequestError(f"{name} is too large") from None


def widget_bool(value, name: str) -> bool:
    """A checkbox's value: true or false (also 1 / 0), nothing else."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise RequestError(f"{name} must be true or false, got {str(value)[:40]!r}")


SELF_CONDITION_VALUES = {"own": None, "on": True, "off": False}  # the self-conditioning radio's values


def widget_self_condition(value) -> bool | None:
    """The self-conditioning control's value: "own" (None: the checkpoint's own), "on" / "off", or true / false."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    if value is None or value in SELF_CONDITION_VALUES:
        return SELF_CONDITION_VALUES.get(value)
    raise RequestError(f"self-conditioning must be 'own' (the checkpoint's), 'on' or 'off', got {str(value)[:40]!r}")


def widget_names(value, name: str) -> list[str]:
    """A checkbox group's value: a list of names (None: none). A plain string is refused, not read as its
    characters, and so is anything that is not a string in the list."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequestError(f"{name} must be a list of names, like [\"a\", \"b\"], got {str(value)[:40]!r}")
    return value


def widget_class(value):
    """The class dropdown's value: None (no class) or a class index."""
    return None if value in (None, "") else widget_number(value, "class", int)


def markdown_text(text: str) -> str:
    """Text from a file (a checkpoint's name or metadata) shown in Markdown as data: every markup character escaped."""
    return "".join(f"\\{ch}" if ch in "\\`*_{}[]()#+-.!|<>~" else ch for ch in str(text))


MAX_ERROR_CHARS = 600  # messages quote at most a short prefix of what a user typed; this bounds the rest
MAX_SESSIONS_REMEMBERED = 1000
_last_errors: OrderedDict[str, str] = OrderedDict()  # browser session -> the last sentence it was shown
_last_errors_lock = threading.Lock()


def user_error(error: Exception | str) -> gr.Error:
    """The sentence a user sees (in the API's AppError, and on screen in a red message that stays until closed), at
    most MAX_ERROR_CHARS long. It is also kept for the session, so settle_run can write it into the tab."""
    message = str(error)
    message = message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + " ..."
    session = _session_hash()
    if session is not None:
        with _last_errors_lock:
            _last_errors[session] = message
            _last_errors.move_to_end(session)
            while len(_last_errors) > MAX_SESSIONS_REMEMBERED:
                _last_errors.popitem(last=False)
    return gr.Error(message, duration=None, print_exception=False)


def _session_hash() -> str | None:
    """The browser session of the request being handled: Gradio sets the request around every handler call."""
    from gradio.context import LocalContext

    return getattr(LocalContext.request.get(None), "session_hash", None)


def last_error(request: gr.Request | None) -> str | None:
    """The last sentence user_error made for this browser session (taken, so it is shown once); None if there is
    none (the run was cancelled)."""
    with _last_errors_lock:
        return _last_errors.pop(getattr(request, "session_hash", None), None)


class Cancelled(Exception):
    """Raised inside the work when its handler was closed (API cancel, Stop button, closed tab)."""


TICK = object()  # run_in_worker's "nothing to show": a point where Gradio may close the handler
# At most this long between such points (plus one network evaluation): Stop takes effect within it. Each point is a
# message to the page (20 a second at 0.05 s, re-rendering the outputs each time), so a quarter of a second.
TICK_SECONDS = 0.25


def run_in_worker(work, on_event, limit_seconds: float = math.inf):
    """Run `work(emit)` in a thread; yield what on_event makes of each emitted event (TICK for nothing),
    then ("result", value).

    Cancelling works through the generator: Gradio closes it at a yield, and then the next `emit` (the work
    emits after every network evaluation) raises Cancelled in the worker, so sampling stops within one
    evaluation and this generator returns only once the worker has stopped, freeing the queue's slot.
    The same point enforces the work budget: a run past twice `limit_seconds` (the budget it was estimated
    under) is stopped with a sentence, so a wrong estimate costs at most 2x the limit."""
    events: queue.Queue = queue.Queue()
    outcome = {}
    cancelled = threading.Event()

    def emit(event):
        if cancelled.is_set():
            raise Cancelled()
        if time.monotonic() - started > 2 * limit_seconds:
            raise SamplingError(f"stopped after {time.monotonic() - started:,.0f} s: this run passed twice the "
                                f"{limit_seconds:,.0f} s limit per request it was estimated under; run fewer images, "
                                f"steps or cells")
        events.put(event)

    def target():
        try:
            outcome["value"] = work(emit)
        except Cancelled:
            outcome["cancelled"] = True
        except Exception as error:  # handed to the handler thread, which reports it
            outcome["error"] = error
        finally:
            events.put(None)

    worker = threading.Thread(target=target, daemon=True, name="sampling-worker")
    # A cancel point before any work: Gradio keeps (and so can close) a generator only once its first value is out.
    # A Stop during that first step cancelled nothing, and the work ran on until the garbage collector found the
    # handler (seen as a 2-D lab training on for 30 s after its job was cancelled), so the work starts at the second.
    yield TICK
    started = last_yield = time.monotonic()
    worker.start()
    try:
        while (event := events.get()) is not None:
            update = on_event(event)
            if update is not None:
                yield update
            elif time.monotonic() - last_yield >= TICK_SECONDS:  # a cancel point, without flooding the client
                yield TICK
            else:
                continue
            last_yield = time.monotonic()
        if "error" in outcome:
            error = outcome["error"]
            if isinstance(error, (RequestError, SamplingError)):
                raise user_error(error) from None
            unexpected = user_error(f"Unexpected error: {error}")
            unexpected.print_exception = True
            raise unexpected
        yield ("result", outcome["value"])
    finally:
        cancelled.set()
        worker.join()


def stream_result(work, on_event, outputs: int, limit_seconds: float = math.inf):
    """For generator handlers: yield no-op updates of `outputs` components while `work` runs (each one a point
    where the handler can be cancelled), pass on on_event's own updates, and return the work's result; a run past
    twice `limit_seconds` is stopped (run_in_worker)."""
    for update in run_in_worker(work, on_event, limit_seconds):
        if update is TICK:
            yield tuple(gr.skip() for _ in range(outputs))
        elif update[0] == "result":
            return update[1]
        else:
            yield update
