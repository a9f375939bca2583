"""Command line: python -m diffusion {train,export,sample} --help"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path


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
            parser.add_argument(option, dest=name, type=kind, default=None, help=f"(default {default!r})")


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


def command_train(args):
    from .training import PRESETS, TrainConfig, Trainer

    if args.preset:
        config = PRESETS[args.preset]
    elif args.config:
        config = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    else:
        config = TrainConfig()
    config = _apply_overrides(config, args)
    trainer = Trainer(config)
    if args.resume:
        trainer.load_state()
        print(f"resumed {config.run_dir} at step {trainer.step}", file=sys.stderr)
    trainer.train()


def command_export(args):
    from .training import TrainConfig, Trainer

    run = Path(args.run)
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    trainer = Trainer(dataclasses.replace(config, run_dir=str(run)))
    trainer.load_state()
    print(trainer.export(args.out))


def command_sample(args):
    from .engine import ModelCache, SampleRequest, run_request
    from .images import image_grid, to_pil

    request = SampleRequest(checkpoint=args.checkpoint, sampler=args.sampler, solver=args.solver, steps=args.steps,
                            eta=args.eta, spacing=args.spacing, guidance=args.guidance, class_index=args.class_index,
                            scale=args.scale, self_condition=args.self_condition, seed=args.seed,
                            batch_size=args.batch_size)
    cache = ModelCache(checkpoint_dir=Path(args.checkpoint).parent if args.checkpoint.endswith(".safetensors") else Path(args.checkpoint_dir))
    result = run_request(cache, request)
    to_pil(image_grid(result.images, columns=args.columns), scale=2).save(args.out)
    print(f"{args.out}: {len(result.images)} images, NFE {result.nfe}, {result.seconds:.2f} s")


def build_parser() -> argparse.ArgumentParser:
    from .training import PRESETS, TrainConfig

    parser = argparse.ArgumentParser(prog="python -m diffusion", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a denoiser or classifier (torchrun for several processes)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--preset", choices=sorted(PRESETS), help="start from a shipped checkpoint's recipe")
    train.add_argument("--config", help="JSON file with TrainConfig fields")
    train.add_argument("--resume", action="store_true", help="continue from RUN_DIR/state.safetensors")
    _dataclass_options(train, TrainConfig)
    train.set_defaults(handler=command_train)

    export = commands.add_parser("export", help="write a run's EMA weights as a checkpoint")
    export.add_argument("run", help="run folder (holds config.json and state.safetensors)")
    export.add_argument("--out", required=True, help="output .safetensors path")
    export.set_defaults(handler=command_export)

    sample = commands.add_parser("sample", help="sample a PNG grid from a checkpoint",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sample.add_argument("--checkpoint", required=True, help="checkpoint file or name in --checkpoint-dir")
    sample.add_argument("--checkpoint-dir", default="checkpoints")
    sample.add_argument("--sampler", default="ddim", choices=["ddpm", "ddim", "ode"])
    sample.add_argument("--solver", default="heun", help="ODE solver: euler, heun, dpm++2m")
    sample.add_argument("--steps", type=int, default=50)
    sample.add_argument("--eta", type=float, default=0.0)
    sample.add_argument("--spacing", default="uniform", choices=["uniform", "log-snr"])
    sample.add_argument("--guidance", default="cfg", choices=["none", "cfg", "classifier"])
    sample.add_argument("--class", dest="class_index", type=int, default=0)
    sample.add_argument("--scale", type=float, default=3.0)
    sample.add_argument("--self-condition", action=argparse.BooleanOptionalAction, default=False)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=int, default=16)
    sample.add_argument("--columns", type=int, default=8)
    sample.add_argument("--out", default="samples.png")
    sample.set_defaults(handler=command_sample)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
