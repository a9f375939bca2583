"""The Evaluator: one checkpoint, its evaluation classifier and test set, and a run over the parts of the registry.

Rows are saved as they finish; a later run reuses the rows an earlier JSON holds for the same checkpoint file and
sample settings (config.earlier_run), so an interrupted run resumes and computing one part keeps the others' rows."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import torch

from ..formats.outputs import atomic_write
from ..formats.data import load_fashion_mnist, to_model_range
from ..serving.distributed import default_device, from_main, is_main, map_sharded, on_main
from ..serving.engine import FlowRequest, ModelCache, RequestError, SampleRequest, run_request
from ..core.metrics import (box_blur, class_accuracy, evaluator_outputs, frechet_distance, mean_pairwise_distance,
                       texture_statistics)
from ..formats.outputs import OutputExists
from .config import NOISE_INDEXING, EvalConfig, earlier_run, reusable_rows, row_key
from .outsider import RealSplit
from .parts import PARTS, parts_of_kind
from .report import write_report
from .texture import NOISY_REFERENCE_SIGMA

GENERATOR_KINDS = ("denoiser", "normalizing-flow")


def check_evaluator_fits(model, evaluator, name: str):
    """Our evaluator scores Fashion-MNIST images of its own shape and classes; anything else is refused (an
    imported colour model's 'FID' in a grey garment classifier's feature space would mean nothing)."""
    want = (evaluator.config["image_channels"], evaluator.config["image_size"], len(evaluator.class_names))
    have = (model.config["image_channels"], model.config["image_size"], len(model.class_names))
    if have != want:
        raise RequestError(f"checkpoint {name!r} makes {have[0]}-channel {have[1]} px images of {have[2]} classes; the "
                           f"evaluator ({want[0]}-channel {want[1]} px Fashion-MNIST, {want[2]} classes) does not apply, "
                           f"so accuracy, FID and likelihood on the test set cannot be measured for it")


@dataclass(frozen=True)
class Drawn:
    """The class-balanced samples of one request setting: image i of class k has image index k * per_class + i."""
    images: torch.Tensor  # (N, C, H, W) in [-1, 1]
    labels: torch.Tensor  # (N,)
    nfe: int
    seconds: float


class Evaluator:
    def __init__(self, config: EvalConfig, cache: ModelCache | None = None):
        self.config = c = config.scaled()
        self.cache = cache or ModelCache(c.checkpoint_dir, device=default_device())  # under torchrun: this rank's GPU
        evaluator = self.cache.first_of_kind("evaluator")
        if evaluator is None:
            raise RequestError(f"no evaluator checkpoint in {c.checkpoint_dir}; train one with "
                               f"`python -m diffusion train --preset fashion-evaluator`")
        self.evaluator, self.evaluator_name = evaluator.network, evaluator.name
        self.model = model = self.cache.get(c.checkpoint)  # loaded once: every row samples the same bytes
        self.kind = model.kind
        if self.kind not in GENERATOR_KINDS:
            raise RequestError(f"checkpoint {c.checkpoint!r} has kind {self.kind!r}; only generative checkpoints "
                               f"({', '.join(GENERATOR_KINDS)}) can be evaluated")
        check_evaluator_fits(model, evaluator, c.checkpoint)
        self.classes = len(model.class_names)
        self._drawn: dict[str, Drawn | None] = {}  # samples by request setting, shared by the parts of one run

    @cached_property
    def test_set(self):
        """The Fashion-MNIST test split, read once per Evaluator (reference features and every likelihood row)."""
        return load_fashion_mnist("test")

    @cached_property
    def reference_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test images' penultimate features and texture statistics (computed where rows are scored)."""
        images = to_model_range(self.test_set.images[: self.config.reference])
        return evaluator_outputs(self.evaluator, images)[1], texture_statistics(self.evaluator, images)

    @cached_property
    def judges(self) -> dict:
        """The two evaluation classifiers of the outsider parts by checkpoint name: the evaluator and
        config.second_evaluator."""
        name = self.config.second_evaluator
        second = self.cache.get(name)
        if second.kind != "evaluator":
            raise RequestError(f"the second evaluator {name!r} is a {second.kind}, not an evaluator checkpoint")
        check_evaluator_fits(self.model, second, self.config.checkpoint)
        return {self.evaluator_name: self.evaluator, name: second.network}

    @cached_property
    def real_split(self) -> RealSplit:
        return RealSplit(self)

    @cached_property
    def pool_features(self) -> dict:
        """Each judge's penultimate features of the real_split's pool (feature FID's reference)."""
        return {name: evaluator_outputs(network, self.real_split.pool)[1] for name, network in self.judges.items()}

    @cached_property
    def comparison_features(self) -> dict:
        """Each judge's penultimate features of the real_split's comparison images (precision and recall's real side)."""
        images = self.real_split.comparison.images
        return {name: evaluator_outputs(network, images)[1] for name, network in self.judges.items()}

    def draw(self, **request_fields) -> Drawn | None:
        """config.samples images (equal share per class) of one request setting, sampled once per Evaluator.

        A "seed" field, if given, replaces config.seed (the seed-spread rows); "measure", "method" and "judge" only
        name a row's part, guidance method and two-sample judge. The batches are split across ranks; rank 0 gets them all, the others None."""
        c = self.config
        fields = {k: v for k, v in request_fields.items() if k not in ("measure", "method", "judge")}
        key = row_key(fields)
        if key in self._drawn:
            return self._drawn[key]
        seed = fields.pop("seed", c.seed)
        per_class = max(1, c.samples // self.classes)
        requests = []
        for label in range(self.classes):
            for start in range(0, per_class, c.batch_size):
                # Every sample has its own noise (image index label * per_class + start + i): with the same noise
                # for every class, unconditional rows would repeat per_class images `classes` times.
                common = dict(checkpoint=c.checkpoint, class_index=label, seed=seed,
                              first_index=label * per_class + start, batch_size=min(c.batch_size, per_class - start))
                if self.kind == "normalizing-flow":
                    requests.append(FlowRequest(**common, **fields))
                else:
                    requests.append(SampleRequest(**common, **({"guidance": "none", "scale": 1.0} | fields)))
        results = map_sharded(lambda request: run_request(self.cache, request, model=self.model), requests)
        drawn = None if results is None else Drawn(
            images=torch.cat([r.images for r in results]),
            labels=torch.tensor([r.request.class_index for r in results for _ in range(len(r.images))]),
            nfe=results[-1].nfe, seconds=round(sum(r.seconds for r in results), 1))
        self._drawn[key] = drawn
        return drawn

    def score(self, **request_fields) -> dict | None:
        """Sample one request setting (draw) and score it with the evaluator: the row, on rank 0 (None elsewhere)."""
        drawn = self.draw(**request_fields)
        if drawn is None:
            return None
        return {**request_fields, "nfe": drawn.nfe, **self.metrics(drawn.images, drawn.labels), "seconds": drawn.seconds}

    def metrics(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        probs, features = evaluator_outputs(self.evaluator, images)
        reference, reference_texture = self.reference_features
        diversity = sum(mean_pairwise_distance(features[labels == k]) for k in range(self.classes)) / self.classes
        return {"samples": len(labels), "fid": frechet_distance(features, reference),
                "texture_fid": frechet_distance(texture_statistics(self.evaluator, images), reference_texture),
                "accuracy": class_accuracy(probs, labels), "diversity": diversity}

    def real_data_floor(self, draws: int = 5) -> dict:
        """The metrics of as many real training images (class-balanced) as a row has samples, over several draws.

        This is what a perfect sampler would score: feature FID of a finite sample is biased upwards and noisy,
        so differences between rows smaller than this spread say nothing. The first draw also gives the two texture
        references: the same images blurred by a 3x3 box, and with Gaussian noise of NOISY_REFERENCE_SIGMA added.
        """
        c = self.config
        train = load_fashion_mnist("train")
        per_class = max(1, c.samples // self.classes)
        generator = torch.Generator().manual_seed(c.seed)
        rows, references = [], {}
        for draw in range(draws):
            chosen = []
            for k in range(self.classes):
                members = (train.labels == k).nonzero()[:, 0]
                chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
            chosen = torch.cat(chosen)
            images, labels = to_model_range(train.images[chosen]), train.labels[chosen]
            rows.append(self.metrics(images, labels))
            if draw == 0:
                noise = torch.randn(images.shape, generator=generator)
                references = {"blurred": self.metrics(box_blur(images), labels),
                              "noisy": self.metrics((images + NOISY_REFERENCE_SIGMA * noise).clamp(-1, 1), labels)}
        fids = torch.tensor([r["fid"] for r in rows], dtype=torch.float64)
        textures = torch.tensor([r["texture_fid"] for r in rows], dtype=torch.float64)
        return {"draws": draws, "samples": rows[0]["samples"], "fid": float(fids.mean()), "fid_std": float(fids.std()),
                "texture_fid": float(textures.mean()), "texture_fid_std": float(textures.std()),
                "accuracy": sum(r["accuracy"] for r in rows) / draws, "diversity": sum(r["diversity"] for r in rows) / draws,
                **references}

    def run(self, parts=None, self_conditioning=(False, True), write=True, overwrite=False) -> dict:
        """parts (None: the kind's defaults, parts.PARTS' defaults_for): names of the registry, with - or _.

        Results go to out_dir/CHECKPOINT.json as rows finish; a file there from the same checkpoint and settings is
        continued, one from another file or other settings is replaced only if `overwrite`. Under torchrun every
        rank returns the same results; rank 0 alone reads and writes the files."""
        c = self.config
        mine = parts_of_kind(self.kind)
        default = [p.name for p in mine if self.kind in p.defaults_for]
        wanted = {part.replace("-", "_") for part in (parts or default)}
        if wanted - {p.name for p in mine}:
            raise RequestError(f"checkpoint {c.checkpoint!r} is a {self.kind}: its evaluation parts are "
                               f"{', '.join(p.cli_name for p in mine)}, not "
                               f"{', '.join(sorted(p.replace('_', '-') for p in wanted - {p.name for p in mine}))}")
        model = self.model
        conditioning = tuple(s for s in self_conditioning
                             if not s or (model.kind == "denoiser" and model.self_condition))
        identity = {"checkpoint_sha256": model.sha256, "samples": c.samples,
                    "reference": c.reference, "seed": c.seed, "noise": NOISE_INDEXING}
        path = Path(c.out_dir) / f"{c.checkpoint}.json"
        exists, earlier = on_main(lambda: (path.exists(), earlier_run(path, identity))) if write else (False, {})
        if exists and not overwrite and not earlier:
            raise OutputExists(f"{path} holds an evaluation of another file or with other settings (samples, "
                               f"reference, seed); pass --overwrite to replace it, or choose another --out-dir")
        done = reusable_rows(earlier, PARTS)
        writes = write and is_main()
        started = time.time()
        results = {"config": asdict(c), "identity": identity, "checkpoint": c.checkpoint,
                   "device": str(self.cache.device), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                   "real_data": on_main(self.real_data_floor)}
        planned = {part.name: part.rows(self, conditioning) for part in mine}

        def known(part):  # the rows of a part that are done, in table order (a one-row part: that row or None)
            rows = [done[row_key(r)] for r in planned[part.name] if row_key(r) in done]
            return rows if not part.one_row else (rows[0] if rows else None)

        def known_or_kept(part):  # a part not computed now keeps the earlier run's rows as they are (other settings)
            return earlier[part.name] if part.name not in wanted and earlier.get(part.name) else known(part)

        for part in mine:  # the JSON holds every known row from its first write on
            results[part.name] = known_or_kept(part)
        for part in [p for p in mine if p.name in wanted]:
            for row in planned[part.name]:
                if row_key(row) not in done:
                    measured = part.measure(self, row) if part.measure else self.score(**row)
                    done[row_key(row)] = from_main(measured)  # scored on rank 0
                    results[part.name] = known(part)
                    if writes:
                        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
        for part in mine:  # rows shared between parts (a flow's quality bar is its T = 1 row) are known now
            results[part.name] = known_or_kept(part)
            if part.one_row and results[part.name] is None:
                del results[part.name]
        results["wall_minutes"] = round((time.time() - started) / 60, 1)
        if writes:
            write_report(results, Path(c.out_dir), parts=wanted)
        return results
