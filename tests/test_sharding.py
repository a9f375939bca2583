"""The heavy commands under `torchrun --nproc_per_node 2` (gloo on the CPU) give what one process gives.

Each test runs a command once in this process and once on two torchrun ranks (the three commands in one torchrun
start), both with one thread per process (torchrun's own setting: a CPU kernel's float rounding depends on the thread
count), and compares the outputs: float images and metrics bit for bit. The splits are uneven on purpose (3 pair shards, 3 sample requests on 2 ranks).
"""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from conftest import run_cli, write_tiny_checkpoints

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny 28 px models of 10 classes, so the Fashion-MNIST evaluator and test set apply."""
    folder = tmp_path_factory.mktemp("sharding") / "checkpoints"
    folder.mkdir()
    return write_tiny_checkpoints(folder, image_size=28, class_names=tuple(f"c{i}" for i in range(10)))


def commands(checkpoints):
    """The three commands compared, without their output paths."""
    return {
        # sampled rows (10 batches of 2 per row), likelihood rows (2 dopri5 batches each) and straightness rows
        "evaluate": ("evaluate", "--checkpoint", "tiny", "--checkpoint-dir", checkpoints, "--quick", "--batch-size", 2,
                     "--parts", "samplers", "likelihood", "straightness", "--self-cond", "off", "--samplers", "ddim"),
        # 3 shards on 2 ranks (a round of two, then one)
        "pairs": ("pairs", "--teacher", checkpoints / "tiny-flow.safetensors", "--count", 30, "--shard-size", 10,
                  "--steps", 3, "--batch-size", 5, "--no-self-condition"),
        # --count 10 in requests of 4 (images 0-3, 4-7, 8-9; rank 0 makes two of them)
        "sample": ("sample", "--checkpoint", "tiny", "--checkpoint-dir", checkpoints, "--class", 3, "--count", 10,
                   "--batch-size", 4, "--steps", 3, "--columns", 5),
    }


OUTPUTS = {"evaluate": ("--out-dir", "two"), "pairs": ("--out", "two"), "sample": ("--out", "two.png")}


@pytest.fixture(scope="module")
def on_two_ranks(checkpoints, tmp_path_factory):
    """(the folder the two ranks wrote into, {command: what they printed}), for every command of `commands`."""
    folder = tmp_path_factory.mktemp("two-ranks")
    wanted = {name: (*args, OUTPUTS[name][0], folder / name / OUTPUTS[name][1])
              for name, args in commands(checkpoints).items()
              if name != "evaluate" or FASHION.exists()}
    for name in wanted:
        (folder / name).mkdir()
    return folder, two_ranks(wanted, cwd=folder)


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_process(*args, cwd) -> subprocess.CompletedProcess:
    with one_thread():
        result = run_cli(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


# Each rank runs the commands one after another in one process (the process group, started by the first, serves
# them all), so the three tests pay for one torchrun start, not three: a launcher and two ranks that import torch
# cost ~7 s of CPU a start. Rank 0 prints a marker before each command, once every rank has finished the one before.
RANKS = """
import json, sys
import torch.distributed as dist
from diffusion.__main__ import main
from diffusion.serving.distributed import process_group
for name, command in json.loads(sys.argv[1]):
    rank = process_group()[0]
    if rank == 0:
        print(f"=== {name}", flush=True)
    main(command)
    sys.stdout.flush()
    dist.barrier()
"""


def two_ranks(commands: dict, cwd) -> dict:
    """{name: ARGS}, each as `torchrun --standalone --nproc_per_node 2 -m diffusion ARGS` would run it, in one
    torchrun start with one thread per rank, in `cwd`: {name: what the ranks printed while it ran}."""
    script = Path(cwd) / "ranks.py"
    script.write_text(RANKS)
    listed = json.dumps([[name, list(map(str, args))] for name, args in commands.items()])
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), listed], cwd=cwd, env=os.environ | {"OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    parts = result.stdout.split("=== ")[1:]
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts}


def without_timings(row: dict) -> dict:
    return {key: value for key, value in row.items() if key != "seconds"}


@pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_evaluate_on_two_ranks_gives_the_numbers_of_one(checkpoints, on_two_ranks, tmp_path):
    """The same FID, accuracy, diversity, bits/dim and straightness to the last bit; only rank 0 prints the tables."""
    folder, printed = on_two_ranks
    one_process(*commands(checkpoints)["evaluate"], "--out-dir", tmp_path / "one", cwd=tmp_path)
    two_dir = folder / "evaluate" / "two"
    one, two = (json.loads((path / "tiny.json").read_text()) for path in (tmp_path / "one", two_dir))
    assert printed["evaluate"].count("### tiny") == 1
    assert [len(one[part]) for part in ("samplers", "likelihood", "straightness")] == [1, 2, 2]
    for part in ("samplers", "likelihood", "straightness"):
        assert [without_timings(row) for row in two[part]] == [without_timings(row) for row in one[part]], part
    assert two["real_data"] == one["real_data"]
    assert sorted(p.name for p in two_dir.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def read_shard(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, f.metadata()


def test_pairs_on_two_ranks_are_the_bytes_of_one(checkpoints, on_two_ranks, tmp_path):
    """Every tensor equal, the metadata equal but for the timing."""
    folder, printed = on_two_ranks
    one_process(*commands(checkpoints)["pairs"], "--out", tmp_path / "one", cwd=tmp_path)
    two_dir = folder / "pairs" / "two"
    assert printed["pairs"].count("3 shards (30 pairs)") == 1
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["pairs-00000.safetensors", "pairs-00001.safetensors", "pairs-00002.safetensors"]
    assert sorted(p.name for p in two_dir.iterdir()) == names
    for name in names:
        (one_tensors, one_meta), (two_tensors, two_meta) = read_shard(tmp_path / "one" / name), read_shard(two_dir / name)
        assert one_tensors.keys() == two_tensors.keys() == {"noise", "images", "labels"}
        assert all(torch.equal(one_tensors[key], two_tensors[key]) for key in one_tensors), name
        assert without_timings(one_meta) == without_timings(two_meta)


def test_sample_count_on_two_ranks_draws_the_grid_of_one(checkpoints, on_two_ranks, tmp_path):
    """The same pixels."""
    folder, printed = on_two_ranks
    one_process(*commands(checkpoints)["sample"], "--out", tmp_path / "one.png", cwd=tmp_path)
    assert printed["sample"].count("10 images") == 1
    one, two = (np.asarray(Image.open(path)) for path in (tmp_path / "one.png", folder / "sample" / "two.png"))
    assert one.shape == two.shape and one.std() > 0
    assert np.array_equal(one, two)


def test_sample_count_splits_into_requests_of_the_batch_size(checkpoints):
    from diffusion.__main__ import _sample_requests, build_parser

    args = build_parser().parse_args(["sample", "--checkpoint", "tiny", "--checkpoint-dir", str(checkpoints),
                                      "--class", "3", "--count", "10", "--batch-size", "4"])
    _, requests = _sample_requests(args)
    assert [(r.first_index, r.batch_size, r.class_index) for r in requests] == [(0, 4, 3), (4, 4, 3), (8, 2, 3)]
    args = build_parser().parse_args(["sample", "--checkpoint", "tiny", "--checkpoint-dir", str(checkpoints),
                                      "--class", "all", "--count", "10"])
    with pytest.raises(ValueError, match="--count applies to one class"):
        _sample_requests(args)
