"""diffusion-playground: sample, compare and teach diffusion and flow models in the browser.

    python app.py [--host 127.0.0.1] [--port 7860] [--share] [--checkpoints checkpoints] [--add-model FOLDER ...]
                  [--compile] [--trusted-proxy ADDRESS ...]

Layout and wiring only: each tab is a module of diffusion/app/ (generate, compare, sweep, xy, trajectory, edit, lab2d,
families, lens, card) whose handlers turn widget values into requests for the backend (diffusion.serving.engine / diffusion.serving.studies),
passed in as the model cache. Sampling runs in a worker thread so a handler can stream previews and progress.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import threading
from functools import partial
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from diffusion.app.card import build_card_tab, checkpoint_table
from diffusion.app.common import serve_outputs_directly
from diffusion.app.compare import build_compare_tab
from diffusion.app.edit import build_edit_tab, send_to_edit
from diffusion.app.controls import GUIDANCE_LABELS, class_and_guidance, scale_for_guidance
from diffusion.app.families import build_families_tab
from diffusion.app.examples import example_files, open_example, open_png, opening_outputs
from diffusion.app.generate import APP_GUIDANCE, APP_SAMPLING, build_generate_tab, send_to
from diffusion.app.guard import RequestGuard, instant_handlers_problems
from diffusion.app.lab2d import build_lab2d_tab
from diffusion.app.lens import build_lens_tab
from diffusion.app.sweep import build_sweep_tab
from diffusion.app.xy import build_xy_tab
from diffusion.app.trajectory import build_trajectory_tab
from diffusion.serving.backend import backend_for, use_backend
from diffusion.serving.budget import DEFAULT_REQUEST_SECONDS, WorkBudget
from diffusion.serving.compiled import BackgroundCompiler
from diffusion.serving.memory import limit_malloc_arenas
from diffusion.serving.engine import GENERATIVE_KINDS, ModelCache, SampleRequest, run_request

CHECKPOINT_DIR = Path(os.environ.get("PLAYGROUND_CHECKPOINTS", Path(__file__).parent / "checkpoints"))
EVALUATION_DIR = Path(__file__).parent / "docs" / "evaluation"  # `evaluate` results, shown on a file's card
DEFAULT_CHECKPOINT = "fashion-diffusion"
# Queue policy: sampling saturates the device, so sampling events share one worker ("sampling", limit 1);
# running two at once only makes both slower. At most QUEUE_SIZE requests wait; beyond that Gradio answers
# "Queue is full! Please try again." at once instead of letting a class of students wait minutes.
QUEUE_SIZE = 32
# Uploads (the Likelihood tab takes an image): at most 5 MB a file; the guard (diffusion/app/guard.py) bounds their
# rate per address and the total kept, and delete_cache removes any older than an hour. Every launch (here and in
# the tests) goes through launch_options.
MAX_UPLOAD_FILE = "5mb"
DELETE_CACHE = (600, 3600)  # every 10 minutes, files this app wrote or received more than an hour ago


PAGE_SCRIPT = Path(__file__).parent / "diffusion" / "app" / "page.js"  # range notices beside controls, Ctrl+Enter
# Table headers wrap between words, never inside one (at 400 px wide they broke mid-word).
# History thumbnails stay small (Gradio's gallery stretches two items to the full width).
PAGE_CSS = (".prose th, .prose td { word-break: normal; overflow-wrap: normal; hyphens: manual; }\n"
            "#history .grid-container { grid-template-columns: repeat(auto-fill, 150px) !important; }\n"
            "#history button.thumbnail-item { width: 150px; height: auto; display: flex; flex-direction: column; }\n"
            "#history button.thumbnail-item img { height: 100px; }\n"
            # The whole caption under its image (cut to 'tiny-flow: O...' over the picture, issue 37 item 14).
            "#history .caption-label { position: static; white-space: normal; overflow: visible; max-width: none; "
            "opacity: 1; border: 0; text-align: left; }\n"
            # A picture's label sits above it, not over its top rows (issue 37, item 12: it covered the sweep's first
            # row label, the few-step grid's top and the 2-D lab's panel titles).
            "label[data-testid='block-label'].float { position: static; margin-bottom: var(--spacing-md); }\n"
            ".block:has(img) .icon-button-wrapper.top-panel { position: static; justify-content: flex-end; }\n"
            # A value the page refuses is said in red where it is typed; the "next run" line then says which one.
            "#interval-note .prose, #interval-note .prose * { color: var(--error-text-color, #b91c1c); }\n"
            "#next-run[data-blocked] > :not(.estimate-blocked) { display: none; }\n"
            # On a phone the results come right after the run button (they were ~1,700 px below it, under the
            # settings), then the settings, then the History and the card (the settings were ~2,000 px down, under
            # them); a gallery fits its columns to the screen (8 columns of at least 100 px cut the 4th).
            "@media (max-width: 720px) {\n"
            "  .results-first { display: contents; }\n"
            "  .results-first > * { order: -1; flex: 1 1 100% !important; min-width: 100% !important; }\n"
            "  .results-first > .after-settings { order: 1; }\n"
            "  .grid-container { grid-template-columns: repeat(auto-fill, minmax(72px, 1fr)) !important;\n"
            "                    grid-template-rows: none !important; grid-auto-rows: auto !important; }\n"
            "  .grid-container .thumbnail-item { aspect-ratio: 1 / 1; }\n"  # square cells: no side cropped off
            "}")


def launch_options(demo: gr.Blocks, **guard_options) -> dict:
    """demo.launch's options: the upload bound, the request guard (one door for work, per-session and per-address
    queue caps, body limits, upload budget) and the page's own script."""
    guard = Middleware(RequestGuard, blocks=demo, **guard_options)
    # run_history=False: Gradio's own "Runs" page (the footer link) kept a second, disagreeing history of the calls,
    # with broken images once their files were pruned; the History accordion is the one list (issue 37, item 7).
    return {"max_file_size": MAX_UPLOAD_FILE, "app_kwargs": {"middleware": [guard]}, "run_history": False,
            "head": f"<script>{PAGE_SCRIPT.read_text()}</script>", "css": PAGE_CSS}


# --- layout -----------------------------------------------------------------------------------
INTRO = """# diffusion-playground
Sample class-conditional Fashion-MNIST images from a diffusion model, a rectified-flow model and a normalizing flow
(NICE), compare samplers and model families on the *same noise*, and see what the guidance scale does. Every image is a pure function of (checkpoint, settings, seed, index)."""


def build_demo(cache: ModelCache, queue_size: int = QUEUE_SIZE) -> gr.Blocks:
    """The whole app over one model cache (the backend every tab's handlers are given)."""
    names = cache.names("denoiser")  # the Compare, Sweep and Trajectory tabs need a sampler
    generative = cache.names(*GENERATIVE_KINDS)  # Generate also offers normalizing flows
    available = [e.name for e in cache.entries() if e.available]  # the Model card shows every loadable file
    default = DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT in names else (names[0] if names else None)
    classes, guidance_choices = [], GUIDANCE_LABELS[:1]
    if default:
        classes, guidance_choices = class_and_guidance(cache, cache.get(default))
    guidance_default = "cfg" if any(g[1] == "cfg" for g in guidance_choices) else "none"
    # One sampling job at a time per device. preprocess=False: the handlers get the raw values and check them
    # themselves (diffusion.app.common.widget_number, the engine), so every wrong input, through the browser or
    # the API, gets one sentence naming its field instead of a component's anonymous bounds error.
    sampling = {"concurrency_limit": backend_for(cache).workers, "concurrency_id": "sampling", "preprocess": False}
    serve_outputs_directly()  # the PNGs a run returns go out as written, not copied into Gradio's cache

    with gr.Blocks(title="diffusion-playground", fill_width=True, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(INTRO)
        if not names:
            gr.Markdown(f"**No usable checkpoint in the folder `{cache.checkpoint_dir.name}`.**\n\n"
                        f"{checkpoint_table(cache)}")
        examples = example_files(cache)  # (path, title) of those whose checkpoint is served here
        with gr.Accordion("Examples: one click shows the result and puts its settings in their tab", open=True,
                          visible=bool(examples)):
            with gr.Row(elem_id="example-buttons"):  # one Tab stop, arrow keys between them (page.js)
                example_buttons = [gr.Button(title, size="sm") for _, title in examples]
            example_picture = gr.Image(label="The example's result (made by its tab: press the button there for the "
                                             "same pixels)", format="png", interactive=False, visible=False,
                                       height=300)
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                generate = build_generate_tab(
                    demo, cache, EVALUATION_DIR, generative, default, classes, guidance_choices, guidance_default,
                    sampling)

            with gr.Tab("Compare samplers", id="compare", elem_id="tab-compare"):
                compare, c_student = build_compare_tab(
                    cache, names, default, classes, guidance_choices, guidance_default, sampling)

            with gr.Tab("Guidance sweep", id="sweep", elem_id="tab-sweep"):
                sweep = build_sweep_tab(cache, names, default, classes, guidance_choices, guidance_default, sampling)

            with gr.Tab("X/Y grid", id="xy", elem_id="tab-xy"):
                xy = build_xy_tab(cache, names, default, classes, guidance_choices, guidance_default, sampling)

            with gr.Tab("Trajectory", id="trajectory", elem_id="tab-trajectory"):
                trajectory = build_trajectory_tab(
                    cache, names, default, classes, guidance_choices, guidance_default, sampling)

            with gr.Tab("Edit", id="edit", elem_id="tab-edit"):
                edit = build_edit_tab(cache, sampling)

            with gr.Tab("2-D lab", id="lab2d", elem_id="tab-lab2d"):
                build_lab2d_tab(sampling, limit_seconds=cache.budget.seconds)

            with gr.Tab("Families", id="families", elem_id="tab-families"):
                family_pickers = build_families_tab(cache, classes, sampling)

            with gr.Tab("Likelihood", id="likelihood", elem_id="tab-likelihood"):
                lens_checkpoints, lens_sample_checkpoint = build_lens_tab(cache, classes, sampling)

            with gr.Tab("Model card", id="card", elem_id="tab-card"):
                m_checkpoint, m_rescan, m_files = build_card_tab(demo, cache, EVALUATION_DIR, available, default)

                def rescan():
                    """New, removed or replaced checkpoints, without a restart: every checkpoint list anew."""
                    generative, denoisers = cache.names(*GENERATIVE_KINDS), cache.names("denoiser")
                    available = [e.name for e in cache.entries() if e.available]
                    pickers = [gr.Dropdown(choices=generative), *(gr.Dropdown(choices=denoisers) for _ in range(4)),
                               gr.Dropdown(choices=available), *(gr.CheckboxGroup(choices=generative) for _ in range(4)),
                               gr.Dropdown(choices=generative), gr.Dropdown(choices=cache.few_step_names()),
                               gr.Dropdown(choices=generative)]
                    return (*pickers, "### Files in the checkpoint folder\n" + checkpoint_table(cache))

                studies = (compare, sweep, trajectory, xy)
                m_rescan.click(rescan, None, [generate.checkpoint, *(t.controls["checkpoint"] for t in studies), m_checkpoint,
                                              *family_pickers, lens_checkpoints, lens_sample_checkpoint, c_student,
                                              edit["checkpoint"], m_files],
                               api_name="rescan")
            for target in studies:  # Generate's "Send to" buttons
                send_to(cache, generate, target, tabs)
            send_to_edit(cache, generate, edit, tabs)
            opened = opening_outputs(generate, studies, tabs)
            generate.settings_png.upload(lambda path: open_png(cache, generate, studies, path), generate.settings_png,
                                         opened, api_name="load_settings")

            for button, (path, _) in zip(example_buttons, examples):
                button.click(partial(open_example, cache, generate, studies, path), None, [example_picture, *opened],
                             api_name=False)
            for target in (generate, compare, trajectory, xy):
                # .input: the user's choice only; settings loaded or sent set guidance and scale together.
                target.controls["guidance"].input(scale_for_guidance, target.controls["guidance"],
                                                  target.controls["scale"], api_name=False)
    # api_open=False: Gradio's direct routes (/gradio_api/run/<name>, /gradio_api/api/<name>) refuse queued events, so
    # every handler runs in the queue (its one worker, its size limit); the guard closes those routes too.
    demo.queue(default_concurrency_limit=1, max_size=queue_size, api_open=False)
    pace_queue(demo._queue)
    problems = instant_handlers_problems(demo)  # only these run outside the queue, on the direct routes
    if problems:
        raise RuntimeError("; ".join(problems))
    return demo


PROGRESS_SECONDS = 0.1  # a run's progress bar is sent at most this often (Gradio's Linux default: every 0.01 s)
IDLE_POLL_SECONDS = 0.01  # the queue looks for new work this often while it has none (Gradio's default: 0.001 s)


def pace_queue(queue) -> None:
    """Gradio's queue sends a running job's progress up to 100 times a second and looks for new work 1,000 times a
    second. Each progress message re-renders the page's status: a 1,000-step run kept a browser's renderer at 65 % of
    a core, beside the server's own cost of sending. Ten a second moves the bar as smoothly to the eye. These are
    attributes of Gradio's Queue, not options: building the app fails if an upgrade renames them
    (tests/test_every_control.py checks the values the app runs with)."""
    for name, seconds in (("progress_update_sleep_when_free", PROGRESS_SECONDS),
                          ("sleep_when_free", IDLE_POLL_SECONDS)):
        if not hasattr(queue, name):
            raise RuntimeError(f"gradio's Queue has no {name} any more: see app.pace_queue")
        setattr(queue, name, seconds)


@contextmanager
def trusting(proxies=()):
    """While a server starts: uvicorn takes a client's address from X-Forwarded-For only when the connection comes from
    one of `proxies` (by default from none; uvicorn's own default trusts 127.0.0.1, so that anyone on this machine
    could pick an address per request and dodge the per-address limits). uvicorn reads FORWARDED_ALLOW_IPS when the
    server is created, inside demo.launch; the previous value is restored afterwards."""
    before = os.environ.get("FORWARDED_ALLOW_IPS")
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(proxies)  # "" matches no address
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FORWARDED_ALLOW_IPS", None)
        else:
            os.environ["FORWARDED_ALLOW_IPS"] = before


@contextmanager
def serve(cache: ModelCache, host: str = "127.0.0.1", port: int | None = None, trusted_proxies=(), **guard_options):
    """The app over `cache` on a local port (a free one unless given), without blocking; yields its URL. The tests,
    `benchmark --race` and anything else that needs a live server start it here. guard_options change the request
    guard's limits (diffusion.app.guard.RequestGuard's arguments)."""
    if port is None:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    demo = build_demo(cache)
    with trusting(trusted_proxies):
        _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                                **launch_options(demo, **guard_options))
    try:
        yield url
    finally:
        demo.close()


def warm_up(cache: ModelCache) -> None:
    """At start-up: Generate's default request at two steps, eager, so the background compiler starts on the shapes
    the first user's request will have (the compile takes about a minute on 2 CPU cores, seconds from inductor's
    cache after a restart)."""
    if DEFAULT_CHECKPOINT in cache.names("denoiser"):
        run_request(cache, SampleRequest(checkpoint=DEFAULT_CHECKPOINT, **APP_SAMPLING | {"steps": 2}, **APP_GUIDANCE,
                                         self_condition=None))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    parser.add_argument("--checkpoints", default=None, help="checkpoint folder (default: ./checkpoints); diffusers "
                        "pipeline folders inside it are served too")
    parser.add_argument("--max-request-seconds", type=float, default=DEFAULT_REQUEST_SECONDS,
                        help="the work budget: the most estimated compute time one request may take (from its "
                             "networks' FLOPs and this machine's measured rate); larger requests are refused")
    parser.add_argument("--add-model", action="append", default=[], metavar="FOLDER",
                        help="also serve this diffusers pipeline folder (UNet2DModel + DDPM-style scheduler, "
                             "safetensors weights); repeatable")
    parser.add_argument("--compile", action="store_true",
                        help="compile denoisers with torch.compile in a background thread, a call's shapes at a time "
                             "(about 0.82x the time of a forward on a CPU); they run eager until then, and a run "
                             "compiled can differ from the same run eager by float rounding, now and then in a pixel, "
                             "so the same settings no longer promise the same pixels. Off by default")
    parser.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
                        help="a reverse proxy's address (or network, e.g. 10.0.0.0/8) whose X-Forwarded-For header "
                             "names the client; repeatable. Without it the header is ignored and the connection's "
                             "address counts (the per-address limits cannot be dodged by writing the header)")
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="sample on Ray Serve replicas (pip install -e \".[serve]\"; docs/serving.md): 'local' "
                             "starts Ray on this machine, an address (HOST:6379, ray://HOST:10001) joins a cluster")
    parser.add_argument("--replicas", type=int, default=1, help="with --ray: Sampler replicas (one per GPU or core)")
    parser.add_argument("--max-replicas", type=int, default=None,
                        help="with --ray: autoscale between --replicas and this many replicas")
    parser.add_argument("--no-batching", action="store_true",
                        help="with --ray: never merge users' requests into one network batch")
    args = parser.parse_args(argv)
    for proxy in args.trusted_proxy:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            parser.error(f"--trusted-proxy {proxy[:200]}: not an IP address or network")
    if not 1 <= args.replicas <= 64 or (args.max_replicas is not None and not args.replicas <= args.max_replicas <= 64):
        parser.error("--replicas must be 1 to 64, and --max-replicas at least --replicas")
    for folder in args.add_model:  # a typo would otherwise serve nothing, silently
        if not Path(folder).is_dir():
            parser.error(f"--add-model {folder[:200]}: not a folder")
    if args.checkpoints and not Path(args.checkpoints).is_dir():
        parser.error(f"--checkpoints {args.checkpoints[:200]}: not a folder")
    if not 0 < args.max_request_seconds < 86_400:
        parser.error(f"--max-request-seconds must be between 0 and 86400, got {args.max_request_seconds:g}")
    return args


if __name__ == "__main__":
    args = parse_args()
    limit_malloc_arenas()  # before any thread: Gradio's handler threads would each keep an arena's peak
    # With --ray the front holds no network: its cache describes each file from its header (weights=False) for the
    # metadata, validation and the budget's FLOPs, and takes the rate and call overheads from a replica.
    cache = ModelCache(args.checkpoints or CHECKPOINT_DIR, capacity=4, extra_folders=args.add_model,
                       budget=WorkBudget(seconds=args.max_request_seconds), weights=not args.ray,
                       compiler=BackgroundCompiler() if args.compile and not args.ray else None)
    if args.ray:  # the front keeps the cache for metadata and the budget; replicas sample
        from diffusion.serving.ray_start import RayUnavailable, start_ray_backend

        try:
            use_backend(cache, start_ray_backend(cache, args.ray, args.replicas, batching=not args.no_batching,
                                                 compile=False, max_replicas=args.max_replicas,  # docs/serving.md
                                                 min_replicas=args.replicas if args.max_replicas else None))
        except RayUnavailable as error:
            raise SystemExit(f"error: {error}") from None
    if cache.compiler is not None:
        threading.Thread(target=warm_up, args=(cache,), daemon=True, name="warm-up").start()
    demo = build_demo(cache)
    with trusting(args.trusted_proxy):
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options(demo))
