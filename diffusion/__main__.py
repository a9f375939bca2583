"""Command line: python -m diffusion {train,export,sample,evaluate,benchmark,lab2d-report,cards} --help"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import typing
from pathlib import Path

from .formats.outputs import OutputExists, quick_output_dir, refuse_to_replace


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """One `python -m diffusion NAME`: its parser's arguments (help, description, formatter), the function that
    declares its options beside its handler, and the handler."""
    name: str
    parser_arguments: dict
    add_options: typing.Callable[[argparse.ArgumentParser], None]
    run: typing.Callable[[argparse.Namespace], None]


def _dataclass_options(parser: argparse.ArgumentParser, cls, prefix: str = ""):
    """One --option per field of a (nested) config dataclass; its help shows the preset-free default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(kind):
            _dataclass_options(parser, kind, prefix=name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        option = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(option, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default {default})")
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(option, dest=name, type=int, nargs="+", default=None, help=f"(default {default})")
        else:
            parser.add_argument(option, dest=name, type=finite_float if kind is float else kind, default=None,
                                help=f"(default {default!r})")


def _apply_overrides(config, args: argparse.Namespace, prefix: str = ""):
    changes = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            changes[f.name] = _apply_overrides(value, args, prefix + f.name + ".")
        else:
            given = getattr(args, prefix + f.name, None)
            if given is not None:
                changes[f.name] = tuple(given) if isinstance(given, list) else given
    return dataclasses.replace(config, **changes)


def train_options(parser: argparse.ArgumentParser):
    from .training import PRESETS, TrainConfig

    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a shipped checkpoint's recipe")
    parser.add_argument("--config", help="JSON file with TrainConfig fields")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/state.safetensors")
    _dataclass_options(parser, TrainConfig)
    _overwrite_option(parser, "the checkpoint at --export-to")


def command_train(args):
    from .training import PRESETS, TrainConfig, Trainer

    if args.preset:
        config = PRESETS[args.preset]
    elif args.config:
        config = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    else:
        config = TrainConfig()
    config = _apply_overrides(config, args)
    trainer = Trainer(config, overwrite=args.overwrite)
    if args.resume:
        trainer.load_state()
        print(f"resumed {config.run_dir} at step {trainer.step}", file=sys.stderr)
    trainer.train()


def export_options(parser: argparse.ArgumentParser):
    parser.add_argument("run", help="run folder (holds config.json and state.safetensors)")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    _overwrite_option(parser, "--out")


def command_export(args):
    from .training import TrainConfig, Trainer

    run = Path(args.run)
    out = refuse_to_replace(output_in_existing_folder(args.out), args.overwrite)
    try:
        config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"error: {run} is not a training run folder (its config.json: "
                         f"{getattr(error, 'strerror', None) or error})") from None
    trainer = Trainer(dataclasses.replace(config, run_dir=str(run), export_to=""))
    trainer.load_state()
    print(trainer.export(out, overwrite=args.overwrite))


def pairs_options(parser: argparse.ArgumentParser):
    from .training.pairs import PAIR_METHODS

    parser.add_argument("--teacher", default="checkpoints/fashion-flow.safetensors", help="a flow checkpoint file")
    parser.add_argument("--out", default="runs/reflow-pairs", help="folder of pairs-NNNNN.safetensors shards")
    parser.add_argument("--count", type=positive_int, default=20_000)
    parser.add_argument("--shard-size", type=positive_int, default=1000)
    parser.add_argument("--solver", default="dpm++2m", help="euler, heun or dpm++2m")
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--scale", type=finite_float, default=2.0, help="the teacher's classifier-free guidance")
    parser.add_argument("--method", default="cfg", choices=PAIR_METHODS,
                        help="how the teacher is guided at --scale (guidance.GUIDANCE_METHODS)")
    parser.add_argument("--self-condition", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=non_negative_int, default=1)
    parser.add_argument("--batch-size", type=positive_int, default=100)
    parser.add_argument("--part", default="0/1", help="i/n: make only shards k with k mod n = i (n runs sharing one folder "
                        "without torchrun; under torchrun the ranks share the shards by themselves)")
    parser.add_argument("--quick", action="store_true", help="40 pairs in 2 shards with 3 steps (CI)")


def command_pairs(args):
    from .serving.distributed import default_device, is_main
    from .training.pairs import PairConfig, generate_pairs

    output_folder(args.out)  # the shard folder may be new; its parent must exist
    count, shard = (40, 20) if args.quick else (args.count, args.shard_size)
    config = PairConfig(teacher=args.teacher, count=count, shard_size=shard, solver=args.solver,
                        steps=3 if args.quick else args.steps, scale=args.scale, method=args.method, seed=args.seed,
                        self_condition=args.self_condition, batch_size=args.batch_size)
    try:
        part = tuple(int(n) for n in args.part.split("/"))
    except ValueError:
        raise SystemExit(f"--part must look like 0/2, got {args.part!r}") from None
    paths = generate_pairs(config, args.out, device=default_device(), part=part,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    if is_main():
        print(f"{len(paths)} shards ({config.count} pairs) in {args.out}" + (f", part {args.part}" if args.part != "0/1" else ""))


DENOISER_SAMPLE_DEFAULTS = {"sampler": "ddim", "solver": "heun", "steps": 50, "eta": 0.0, "spacing": "uniform",
                            "guidance": "cfg", "scale": 3.0, "self_condition": False}


def large_teacher_options(parser: argparse.ArgumentParser):
    from .training.large_teacher import LargeTeacherConfig

    parser.add_argument("--teacher-minutes", type=finite_float, default=LargeTeacherConfig.teacher_minutes)
    parser.add_argument("--student-minutes", type=finite_float, default=LargeTeacherConfig.student_minutes)
    parser.add_argument("--pairs", type=positive_int, default=LargeTeacherConfig.pairs)
    parser.add_argument("--out", default=None, help="folder of the runs, the pairs and (under export/) the exported "
                        "files (default runs/large-teacher; with --quick a temporary folder)")
    parser.add_argument("--data-dir", default="", help="the Fashion-MNIST folder, if not Debian's /usr/share/datasets one")
    parser.add_argument("--quick", action="store_true", help="the same steps at a tiny size, in seconds on a CPU (CI)")


def command_large_teacher(args):
    from .training.large_teacher import LargeTeacherConfig, run_large_teacher

    root = args.out or (str(quick_output_dir("large-teacher")) if args.quick else LargeTeacherConfig.run_root)
    config = LargeTeacherConfig(teacher_minutes=args.teacher_minutes, student_minutes=args.student_minutes,
                                pairs=args.pairs, run_root=root, out_dir=f"{root}/export", data_dir=args.data_dir,
                                quick=args.quick)
    files = run_large_teacher(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    for role, path in files.items():
        print(f"{role}: {path}")


def sample_options(parser: argparse.ArgumentParser):
    from .core.guidance import GUIDANCE_MODES
    from .core.sampling import SAMPLERS
    from .core.schedules import SPACINGS

    parser.add_argument("--checkpoint", help="checkpoint file or name in --checkpoint-dir")
    parser.add_argument("--settings-from", metavar="FILE.png", help="sample the exact request a PNG made by this "
                        "project carries (the app's downloads, an earlier `sample`): the same pixels again")
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    parser.add_argument("--sampler", choices=list(SAMPLERS), help="denoisers (default ddim)")
    parser.add_argument("--solver", help="ODE solver: euler, heun, dpm++2m (default heun)")
    parser.add_argument("--steps", type=positive_int, help="denoisers (default 50)")
    parser.add_argument("--eta", type=finite_float, help="DDIM eta (default 0)")
    parser.add_argument("--spacing", choices=list(SPACINGS), help="time spacing (default uniform; leading: diffusers' default)")
    parser.add_argument("--guidance", choices=list(GUIDANCE_MODES), help="denoisers (default cfg; autoguidance guides "
                        "with CHECKPOINT-weak)")
    parser.add_argument("--class", dest="class_index", default="0", help="class, by index or name (any case), or 'all' for one row per class")
    parser.add_argument("--scale", type=finite_float, help="guidance scale (default 3)")
    parser.add_argument("--self-condition", action=argparse.BooleanOptionalAction, default=None,
                        help="denoisers trained with it (default off)")
    parser.add_argument("--temperature", type=finite_float, help="normalizing flows: z ~ N(0, T^2 I) (default 1)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--count", type=positive_int, help="images of one class (default: --batch-size); image i "
                        "has the noise of (seed, i), however the requests are split")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--columns", type=positive_int, default=8)
    parser.add_argument("--out", default="samples.png")
    _overwrite_option(parser, "--out")


def command_sample(args):
    """One grid: `--class N` for `--count` images of one class (in requests of `--batch-size`), `--class all` for one
    row of `--columns` images per class, or `--settings-from FILE.png` for the exact request a PNG of this project
    carries (the same pixels again). Under torchrun the requests are split across the ranks; rank 0 writes the grid.

    A denoiser takes the sampler options, a normalizing flow `--temperature`; an option of the other kind is
    an error, never ignored. A grid of one request carries it in its PNG (settings.png_info)."""
    import torch

    from .serving.distributed import map_sharded
    from .serving.engine import ModelCache, RequestError, run_request
    from .formats.images import display_scale, image_grid, to_pil
    from .serving.settings import request_from_png, result_png_info

    refuse_to_replace(output_in_existing_folder(args.out), args.overwrite)
    if args.settings_from:
        given = [f"--{key.replace('_', '-')}" for key in (*DENOISER_SAMPLE_DEFAULTS, "temperature", "checkpoint", "count")
                 if getattr(args, key) is not None]
        if given:
            raise RequestError(f"--settings-from takes every setting from the PNG; leave out {', '.join(given)}")
        request, sha256 = request_from_png(args.settings_from)
        cache = ModelCache(Path(args.checkpoint_dir))
        if sha256 and cache.get(request.checkpoint).sha256 != sha256:
            print(f"warning: {request.checkpoint} is not the file the PNG was made with (SHA-256 "
                  f"{sha256[:12]}...); the pixels may differ", file=sys.stderr)
        requests = [request]
    else:
        if not args.checkpoint:
            raise RequestError("give --checkpoint NAME (or --settings-from FILE.png)")
        cache, requests = _sample_requests(args)
    results = map_sharded(lambda request: run_request(cache, request), requests)
    if results is None:  # another rank than 0: its share went to rank 0
        return
    images = torch.cat([r.images for r in results])
    settings = result_png_info(results[0]) if len(results) == 1 else None  # a grid of one request carries it
    to_pil(image_grid(images, columns=args.columns), scale=display_scale(images.shape[-1], 56)).save(args.out, pnginfo=settings)
    seconds = sum(r.seconds for r in results)
    print(f"{args.out}: {len(images)} images, NFE {results[0].nfe} per image batch, {seconds:.2f} s")


def _sample_requests(args):
    """(the model cache, the requests of `sample`'s options: one per class row, or `--count` images in requests of
    `--batch-size`, request k starting at image index k * batch size)."""
    import dataclasses as dc

    from .serving.distributed import default_device
    from .serving.engine import FlowRequest, ModelCache, RequestError, SampleRequest, class_index_of

    given = Path(args.checkpoint)
    is_path = given.suffix == ".safetensors" or len(given.parts) > 1
    cache = ModelCache(given.parent if is_path else Path(args.checkpoint_dir), device=default_device())
    name = (given.name if given.is_dir() else given.stem) if is_path else args.checkpoint
    kind = cache.get(name).kind
    every_class = args.class_index == "all"
    if every_class and args.count is not None:
        raise RequestError("--count applies to one class; --class all makes --columns images per class")
    count = args.batch_size if args.count is None else args.count
    class_index = 0 if every_class else class_index_of(args.class_index, cache.get(name).class_names)
    common = dict(checkpoint=name, class_index=class_index, seed=args.seed,
                  batch_size=args.columns if every_class else min(args.batch_size, count))
    sampler_options = {key: getattr(args, key) for key in DENOISER_SAMPLE_DEFAULTS if getattr(args, key) is not None}
    if kind == "normalizing-flow":
        if sampler_options:
            raise RequestError(f"checkpoint {name!r} is a normalizing flow: {', '.join('--' + k.replace('_', '-') for k in sampler_options)} "
                               f"do not apply (it decodes noise in one exact pass); use --temperature")
        request = FlowRequest(**common, temperature=1.0 if args.temperature is None else args.temperature)
    else:
        if args.temperature is not None:
            raise RequestError(f"checkpoint {name!r} has kind {kind!r}: --temperature applies to normalizing flows only")
        request = SampleRequest(**common, **(DENOISER_SAMPLE_DEFAULTS | sampler_options))
    if every_class:
        return cache, [dc.replace(request, class_index=k) for k in range(len(cache.get(name).class_names))]
    return cache, [dc.replace(request, first_index=first, batch_size=min(args.batch_size, count - first))
                   for first in range(0, count, args.batch_size)]


def import_diffusers_options(parser: argparse.ArgumentParser):
    parser.add_argument("folder", help="folder with model_index.json, unet/ and scheduler/ (safetensors weights)")
    parser.add_argument("--out", required=True, help="output .safetensors path, e.g. checkpoints/NAME.safetensors")
    parser.add_argument("--class-names", help="comma-separated names of a class-conditional UNet's classes")
    parser.add_argument("--null-class", type=non_negative_int, help="the class embedding trained as 'no class' (must be the "
                        "last one): enables classifier-free guidance")
    _overwrite_option(parser, "--out")


def command_import_diffusers(args):
    """A diffusers pipeline folder (UNet2DModel + DDPM-style scheduler) as one of our checkpoint files."""
    from .formats.checkpoint import load_checkpoint
    from .formats.conversion import convert_folder

    names = tuple(n.strip() for n in args.class_names.split(",")) if args.class_names else None
    refuse_to_replace(output_in_existing_folder(args.out), args.overwrite)
    out = convert_folder(Path(args.folder), Path(args.out), class_names=names, null_class=args.null_class)
    model = load_checkpoint(out)
    parameters = sum(p.numel() for p in model.network.parameters())
    print(f"{out}: {parameters / 1e6:.2f} M parameters, {model.config['image_channels']} x {model.config['image_size']}"
          f"^2 px, {len(model.class_names) or 'no'} classes, predicts {model.parameterization}\n{model.card}")


def evaluate_options(parser: argparse.ArgumentParser):
    from .evaluation import PARTS, parts_help
    from .core.sampling import SAMPLERS

    parser.add_argument("--checkpoint", default="fashion-diffusion")
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    parser.add_argument("--samples", type=positive_int, default=1000, help="samples per configuration (class-balanced)")
    parser.add_argument("--reference", type=positive_int, default=10_000, help="test images for the reference statistics")
    parser.add_argument("--batch-size", type=positive_int, default=50)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out-dir", default=None, help=f"(default {DEFAULT_EVALUATION_DIR}; with --quick a new "
                        "temporary folder) where NAME.json, NAME.md and plots go; a run with the same checkpoint and "
                        "settings continues the file there")
    parser.add_argument("--quick", action="store_true", help="a tiny run (CI): 20 samples, 3 samplers, 2 scales")
    parser.add_argument("--parts", nargs="+", default=None, choices=[part.cli_name for part in PARTS.values()],
                        help=parts_help())
    parser.add_argument("--likelihood-images", type=positive_int, default=1000, help="test images for the likelihood part")
    parser.add_argument("--likelihood-tolerance", type=finite_float, default=1e-4,
                        help="the probability-flow ODE solver's rtol = atol (dopri5)")
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), help="the samplers part: only these "
                        "samplers' rows (default: every sampler)")
    parser.add_argument("--guided-steps", nargs="+", type=positive_int, help="the guided-realism part: only the rows "
                        "at these step counts (default: 10, 15 and 20); click-time times the same rows")
    parser.add_argument("--second-evaluator", default="fashion-second-evaluator",
                        help="the other evaluator checkpoint of the second-evaluator and precision-recall parts")
    parser.add_argument("--probe-images", type=positive_int, default=100, help="test images for the probes part")
    parser.add_argument("--self-cond", default="both", choices=["both", "on", "off"],
                        help="self-conditioning settings for the sampler table")
    _overwrite_option(parser, "an evaluation of another file or other settings in --out-dir")


def command_evaluate(args):
    from .serving.distributed import is_main, on_main
    from .evaluation import EvalConfig, Evaluator, markdown_tables

    out_dir = args.out_dir or (on_main(lambda: quick_output_dir("evaluate")) if args.quick else DEFAULT_EVALUATION_DIR)
    output_in_existing_folder(out_dir)  # the folder itself may be new; its parent must exist
    config = EvalConfig(checkpoint=args.checkpoint, checkpoint_dir=args.checkpoint_dir, samples=args.samples,
                        reference=args.reference, batch_size=args.batch_size, seed=args.seed, out_dir=str(out_dir),
                        progress_dir=str(Path(out_dir) / "likelihood-progress") if args.quick else "runs/likelihood",
                        quick=args.quick, likelihood_images=args.likelihood_images,
                        likelihood_tolerance=args.likelihood_tolerance, probe_images=args.probe_images,
                        samplers=tuple(args.samplers or ()), guided_steps=tuple(args.guided_steps or ()),
                        second_evaluator=args.second_evaluator)
    conditioning = {"both": (False, True), "on": (True,), "off": (False,)}[args.self_cond]
    parts = tuple(args.parts) if args.parts else None
    results = Evaluator(config).run(parts=parts, self_conditioning=conditioning, overwrite=args.overwrite)
    if is_main():
        print(markdown_tables(results))
        print(f"written to {out_dir}", file=sys.stderr)


def benchmark_options(parser: argparse.ArgumentParser):
    parser.add_argument("--checkpoint", default="fashion-diffusion")
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--steps", type=positive_int, default=50)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--out", default=None, help="Markdown report (default docs/benchmarks.md, with --quick a "
                        "temporary folder; '' to skip)")
    parser.add_argument("--quick", action="store_true", help="batch 4, 5 steps, one repeat (CI)")
    parser.add_argument("--race", action="store_true", help="instead: time to a 16-image grid at >= 95 %% evaluator "
                        "accuracy for each model at its cheapest evaluated setting, and through the app")
    parser.add_argument("--race-repeats", type=positive_int, default=5)
    parser.add_argument("--budget", action="store_true", help="instead: the work budget's estimate beside the measured "
                        "time of 17 requests (batch 1-64, NFE 1-4000, every guidance and sampler kind, edits, studies)")
    parser.add_argument("--budget-out", default=None, help="Markdown report of --budget (default "
                        "docs/benchmarks-budget.md, with --quick a temporary folder; '' to skip)")
    parser.add_argument("--race-out", default=None, help="Markdown report of --race (default docs/benchmarks-race.md, "
                        "with --quick a temporary folder; '' to skip)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(network) (takes minutes)")
    parser.add_argument("--peak-tflops", type=finite_float, default=None,
                        help="the device's peak TFLOP/s for this dtype, for the fraction-of-peak row")
    _overwrite_option(parser, "the report")


def command_benchmark(args):
    from .evaluation.benchmark import BenchConfig, report, run_benchmark, write_report

    if args.race:
        return command_race(args)
    if args.budget:
        return command_budget_table(args)

    out = _report_path(args.out, "docs/benchmarks.md", "benchmarks.md", args)
    config = BenchConfig(checkpoint=args.checkpoint, checkpoint_dir=args.checkpoint_dir, batch=args.batch,
                         steps=args.steps, repeats=args.repeats, quick=args.quick, compile=args.compile,
                         peak_tflops=args.peak_tflops)
    results = run_benchmark(config)
    print(report(results))
    if out:
        write_report(results, out)
        print(f"written to {out}", file=sys.stderr)


def _report_path(given: str | None, default: str, name: str, args) -> Path | None:
    """Where a report goes: the path given ('' for nowhere), else the docs page, or a temporary folder for --quick;
    an existing file is replaced only with --overwrite (checked before any work)."""
    if given == "":
        return None
    path = Path(given) if given else quick_output_dir("benchmark") / name if args.quick else Path(default)
    return refuse_to_replace(output_in_existing_folder(path), args.overwrite)


def command_budget_table(args):
    from .evaluation.budget_table import run_budget_table

    out = _report_path(args.budget_out, "docs/benchmarks-budget.md", "benchmarks-budget.md", args)
    rows, text = run_budget_table(args.checkpoint_dir, quick=args.quick,
                                  log=lambda line: print(line, file=sys.stderr, flush=True))
    print(text)
    if out:
        out.write_text("# The work budget against the clock\n\nWritten by `python -m diffusion benchmark --budget`: "
                       "each request estimated as its endpoint checks it (network calls x each network's measured "
                       "per-call overhead + FLOPs, at the rate probed then), then run, one after another in one "
                       "process.\n\n" + text + "\n")
        print(f"written to {out}", file=sys.stderr)


def command_race(args):
    from .serving.engine import ModelCache
    from .evaluation.race import run_race, race_report

    out = _report_path(args.race_out, "docs/benchmarks-race.md", "benchmarks-race.md", args)
    try:
        from app import serve  # app.py at the repository root: the app lives above the library
    except ImportError:
        raise SystemExit("the round trip through the app needs app.py: run from the repository root") from None

    results = run_race(ModelCache(args.checkpoint_dir), repeats=1 if args.quick else args.race_repeats, serve=serve)
    text = race_report(results)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# Few-step race\n\nWritten by `python -m diffusion benchmark --race`.\n\n" + text)
        print(f"written to {out}", file=sys.stderr)


def cards_options(parser: argparse.ArgumentParser):
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    parser.add_argument("--evaluation-dir", default="docs/evaluation", help="where `evaluate` wrote its JSON")


def command_cards(args):
    """A Markdown table of the checkpoints in a folder, from their metadata (checkpoints/README.md)."""
    from .formats.checkpoint import load_checkpoint
    from .evaluation import likelihood_summary, recorded_likelihood

    rows = ["| file | kind | model | parameters | training | likelihood (bits/dim) | card |",
            "|---|---|---|---|---|---|---|"]
    for path in sorted(Path(args.checkpoint_dir).glob("*.safetensors")):
        model = load_checkpoint(path)
        config, training = model.config, model.training
        if model.kind == "denoiser":
            what = (f"{model.schedule.name}, {config['parameterization']}-prediction"
                    + (", self-cond" if model.self_condition else ""))
        elif model.kind == "normalizing-flow":
            net = model.network.config
            what = f"{config['network']}, {net.couplings} couplings of {net.hidden_layers} x {net.hidden_width} units"
        else:
            conditioned = getattr(model.network.config, "noise_conditioned", False)  # a ConvNet sees clean images only
            what = ("noise-conditioned" if conditioned else "clean images") + (
                "" if config["network"] == "Classifier" else f" ({config['network']})")
        accuracy, bits = training.get("test_accuracy"), training.get("test_bits_per_dim")
        trained = (f"{training.get('steps')} steps x batch {training.get('batch_size')}, {training.get('wall_minutes')} min "
                   f"on {training.get('device')}" + (f"; test accuracy {accuracy:.3f}" if accuracy else "")
                   + (f"; test {bits:.2f} ± {training.get('test_bits_per_dim_stderr', 0):.2f} bits/dim" if bits else ""))
        parameters = sum(p.numel() for p in model.network.parameters())
        size = path.stat().st_size / 2**20
        likelihood = likelihood_summary(recorded_likelihood(model, Path(args.evaluation_dir))) or "-"
        rows.append(f"| `{path.name}` ({size:.1f} MiB) | {model.kind} | {what} | {parameters / 1e6:.2f} M | {trained} | "
                    f"{likelihood} | {model.card} |")
    print("\n".join(rows))


DEFAULT_EVALUATION_DIR = "docs/evaluation"


def whole_number_at_least(minimum: int):
    """An argparse type: a whole number >= minimum (a count of images, steps, samples; a seed)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text[:40]!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int, non_negative_int = whole_number_at_least(1), whole_number_at_least(0)


def finite_float(text: str) -> float:
    """An argparse type: a finite number (NaN and infinity are refused wherever a number is read)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text[:40]!r}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """A wrong argument is answered with one line (argparse prints the whole usage block first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def output_folder(path) -> Path:
    """A folder a command writes several files into: new or an existing folder, never an existing file."""
    path = output_in_existing_folder(path)
    if path.exists() and not path.is_dir():
        raise OutputExists(f"cannot write into {path}: it is a file, and --out names a folder")
    return path


def output_in_existing_folder(path) -> Path:
    """An output path whose folder exists: commands create no folders but a run's own, so a typo in --out fails
    before the work instead of after it (or creates folders anywhere)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputExists(f"cannot write {path}: the folder {path.parent} does not exist")
    return path


def lab2d_report_options(parser: argparse.ArgumentParser):
    parser.add_argument("--out", default=None, help=f"folder (default {LAB2D_DIR}; with --quick a new temporary folder)")
    parser.add_argument("--quick", action="store_true", help="3 step counts, 32 points, one distribution (CI, seconds)")
    _overwrite_option(parser, "the report in --out")


def command_lab2d_report(args):
    """The 2-D lab's convergence-order plot and guidance-support table, with their reading (README.md)."""
    from .lab2d.report import QUICK, REPORT_FILES, ReportSettings, write_report

    out = output_folder(args.out) if args.out else quick_output_dir("lab2d-report") if args.quick else Path(LAB2D_DIR)
    for name in REPORT_FILES:
        refuse_to_replace(out / name, args.overwrite)
    for path in write_report(out, QUICK if args.quick else ReportSettings()):
        print(path)


LAB2D_DIR = "docs/evaluation/lab2d"


def _overwrite_option(parser: argparse.ArgumentParser, what: str):
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} if it exists (default: refuse)")


def manifest_options(parser: argparse.ArgumentParser):
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    parser.add_argument("--update", nargs="+", metavar="FILE", help="rewrite these files' rows from the files as "
                        "they are now (a row of a removed file is dropped): changing a shipped model on purpose")


def command_manifest(args):
    """Check the shipped checkpoints against checkpoints/MANIFEST.json, or (--update) rewrite some rows on purpose."""
    from .formats.manifest import MANIFEST_NAME, manifest_problems, read_manifest, update_manifest

    folder = Path(args.checkpoint_dir)
    if args.update:
        names = [Path(n).name if Path(n).suffix == ".safetensors" else f"{Path(n).name}.safetensors" for n in args.update]
        update_manifest(folder, names)
        print(f"{folder / MANIFEST_NAME}: rows of {', '.join(names)} rewritten from the files")
        return
    problems = manifest_problems(folder)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(1)
    print(f"all {len(read_manifest(folder))} files in {folder} match {MANIFEST_NAME}")


DEFAULTS_SHOWN = argparse.ArgumentDefaultsHelpFormatter

# The subcommands in `--help` order: name, add_parser's arguments, the function declaring its options, its handler.
SUBCOMMANDS = (
    Subcommand("train", dict(help="train a denoiser or classifier (torchrun for several processes)",
                             formatter_class=DEFAULTS_SHOWN), train_options, command_train),
    Subcommand("pairs", dict(help="reflow's training pairs: noise and the teacher's ODE solution from it, as "
                             "resumable safetensors shards", formatter_class=DEFAULTS_SHOWN),
               pairs_options, command_pairs),
    Subcommand("large-teacher", dict(help="issue 31 on a GPU: train fashion-flow-large, make guided reflow pairs "
                                     "from it and reflow fashion-reflow-large; exports both",
                                     formatter_class=DEFAULTS_SHOWN), large_teacher_options, command_large_teacher),
    Subcommand("export", dict(help="write a run's EMA weights as a checkpoint"), export_options, command_export),
    Subcommand("sample", dict(help="sample a PNG grid from a checkpoint", formatter_class=DEFAULTS_SHOWN),
               sample_options, command_sample),
    Subcommand("import-diffusers", dict(help="convert a diffusers UNet2DModel pipeline folder into one checkpoint "
                                        "file (needs the diffusers extra)", description=command_import_diffusers.__doc__),
               import_diffusers_options, command_import_diffusers),
    Subcommand("evaluate", dict(help="feature FID, class accuracy and diversity per sampler and guidance",
                                formatter_class=DEFAULTS_SHOWN), evaluate_options, command_evaluate),
    Subcommand("benchmark", dict(help="sampling speed ratios on this device", formatter_class=DEFAULTS_SHOWN),
               benchmark_options, command_benchmark),
    Subcommand("lab2d-report", dict(help="the 2-D lab's exact readings: solver convergence orders (plot) and CFG "
                                    "against autoguidance on the class support (table)",
                                    description=command_lab2d_report.__doc__), lab2d_report_options, command_lab2d_report),
    Subcommand("cards", dict(help="print a Markdown table of the checkpoints in a folder"), cards_options, command_cards),
    Subcommand("manifest", dict(help="check the checkpoint folder against its MANIFEST.json (SHA-256, size, kind, "
                                "shape, classes, steps per file)", description=command_manifest.__doc__),
               manifest_options, command_manifest),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser: each subcommand of SUBCOMMANDS adds its own options."""
    parser = OneLineParser(prog="python -m diffusion", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for subcommand in SUBCOMMANDS:
        options = commands.add_parser(subcommand.name, **subcommand.parser_arguments)
        subcommand.add_options(options)
        options.set_defaults(handler=subcommand.run)
    return parser


def main(argv=None):
    from .formats.checkpoint import CheckpointError
    from .formats.data import DataError
    from .serving.engine import RequestError, SamplingError

    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (RequestError, SamplingError, CheckpointError, DataError, OutputExists, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
