"""Compiled networks in the app's path (issue 30, item 1): eager until a background compile is ready, then outputs
equal to eager within float rounding; grad mode, unready shapes and failed compiles stay eager; compiling never
overlaps a compiled call."""

import threading
from dataclasses import replace

import pytest
import torch

from conftest import tiny_unet
from diffusion.serving.compiled import BackgroundCompiler, CompiledNetwork, signature
from diffusion.serving.engine import ModelCache, SampleRequest, run_request


class CountingCalls(torch.nn.Module):
    """The eager network, counting the calls that reach it."""

    def __init__(self, network):
        super().__init__()
        self.network, self.config, self.calls = network, network.config, 0

    def forward(self, *args):
        self.calls += 1
        return self.network(*args)


def inputs(batch=4, size=8):
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 1, size, size, generator=generator), torch.linspace(-5, 5, batch),
            torch.arange(batch) % 2, None)


@pytest.fixture
def inductor_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # the tests write only under tmp_path
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_grad_mode_unready_shapes_and_failed_compiles_run_eager(inductor_cache):
    network = tiny_unet().eval()
    compiled = CompiledNetwork(network, BackgroundCompiler(), max_signatures=1)
    x, log_snr, labels, _ = inputs()
    with torch.no_grad():  # not inference mode: never compiled (e.g. gradients through the network)
        assert torch.equal(compiled(x, log_snr, labels), network(x, log_snr, labels))
    assert compiled.asked == set()

    def broken(*args):
        raise RuntimeError("no C++ compiler")

    compiled.compiled = broken  # as where torch.compile cannot build
    with torch.inference_mode():
        compiled(x, log_snr, labels)
        compiled.compiler.idle()
        assert "no C++ compiler" in compiled.failures[signature(x, log_snr, labels, None)]
        assert compiled.ready == set()
        assert torch.equal(compiled(x, log_snr, labels), network(x, log_snr, labels))
        assert compiled.compile_for(*inputs(batch=2)) is None  # max_signatures = 1: the rest stay eager
    assert compiled.config is network.config  # every other attribute is the eager network's


def test_a_compile_waits_for_compiled_calls_and_calls_during_a_compile_go_eager():
    compiler = BackgroundCompiler()
    started, release = threading.Event(), threading.Event()
    with compiler.serving() as free:
        assert free
        job = compiler.submit(started.set)
        assert not started.wait(0.2)  # a compiled call is running: the compile waits
    job.result(timeout=5)
    job = compiler.submit(lambda: (started.clear(), release.wait(5)))
    while started.is_set():
        pass
    with compiler.serving() as free:
        assert not free  # a compile is running: the call goes eager, it does not wait
    release.set()
    job.result(timeout=5)
    with compiler.serving() as free:
        assert free


@pytest.mark.compile
def test_the_app_path_runs_eager_until_the_background_compile_then_compiled_with_eager_images(checkpoint_dir,
                                                                                             inductor_cache):
    """The one real compile of this file (a tiny UNet: tens of seconds on 2 cores), through the model cache as the
    app serves it."""
    request = SampleRequest(checkpoint="tiny", sampler="ode", solver="euler", steps=2, guidance="cfg", scale=2.0,
                            class_index=1, seed=5, batch_size=3)
    eager = run_request(ModelCache(checkpoint_dir, device="cpu"), request).images
    cache = ModelCache(checkpoint_dir, device="cpu", compiler=BackgroundCompiler())
    network = cache.get("tiny").network
    assert isinstance(network, CompiledNetwork)
    assert not isinstance(cache.get("tiny-evaluator").network, CompiledNetwork)  # only denoisers
    counted = CountingCalls(network.eager)
    network.__dict__["eager"] = counted  # the compiled module wraps the network itself; only eager calls are counted
    first = run_request(cache, request).images  # eager, and asks for a compile of its shapes (cond + uncond rows)
    assert counted.calls == 2 and len(network.asked) == 1
    cache.compiler.idle()
    assert network.failures == {} and network.ready == network.asked
    calls = counted.calls
    second = run_request(cache, request).images  # compiled
    assert counted.calls == calls
    assert torch.equal(first, eager) and (second - eager).abs().max() <= 1e-4
    run_request(cache, replace(request, batch_size=2))  # other shapes: eager (their compile comes later)
    assert counted.calls == calls + 2


def test_the_app_serves_eager_unless_told_to_compile():
    """Eager by default: a compiled run differs from the same run eager by rounding (3 of 64 load-test requests had a
    pixel that differed from their replay while compiles finished), and the app promises the same pixels."""
    import app

    assert not app.parse_args([]).compile and app.parse_args(["--compile"]).compile


def test_the_compilers_thread_runs_jobs_in_order_and_ends_when_the_queue_is_empty():
    """A live thread that has run tensor work keeps an OpenMP team, which slowed the serving thread's forwards by a
    fifth on 2 cores: the compiler's thread must not outlive its queue."""
    compiler = BackgroundCompiler()
    order, release = [], threading.Event()
    first = compiler.submit(lambda: (release.wait(5), order.append(1)))
    second = compiler.submit(lambda: order.append(2))
    failing = compiler.submit(lambda: 1 / 0)
    worker = compiler._worker  # one thread for the queued jobs
    assert worker.is_alive() and worker.name == "compile"
    release.set()
    compiler.idle()
    assert order == [1, 2] and first.done() and second.done()
    with pytest.raises(ZeroDivisionError):  # a job's failure is its caller's to read; the queue goes on
        failing.result()
    assert not worker.is_alive() and compiler._worker is None
    assert compiler.submit(lambda: "again").result(timeout=5) == "again"  # a later job gets a new thread
