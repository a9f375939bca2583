"""torch.compile in the app's sampling path (issue 30, item 1), paid off the request path.

A CompiledNetwork stands in for a denoiser's eager network. A call runs the compiled network only for an input
signature (shapes, dtypes, device, autocast, which optional inputs are given) that the background compiler has
compiled and checked against the eager network; every other call runs the eager network and, under inference mode,
asks the background compiler for that signature, so the calls after it run compiled. A request never waits for
inductor: while a compile runs, requests run eager; a compiled call runs under dynamo's "fail_on_recompile" stance,
so one that would compile raises instead, and runs eager. The stance is one global of the process, so it is counted
process-wide (_RULE): switched on when the first compiled call of any thread starts, back to "default" when the last
one ends, and compiles (of every compiler) run only while it is off. (A `with set_stance(...)` per call restored
whatever the thread saw on entry: two overlapping calls left "fail_on_recompile" on, and every later compile failed.) Calls with autograd on (training, gradients through the
network) always run eager. A signature whose compile or check fails stays eager, its reason kept in `failures`; so
does every call where torch.compile is unavailable.

Inductor keeps compiled graphs on disk (its FX graph cache, on by default, under TORCHINDUCTOR_CACHE_DIR), so a
restarted app compiles a signature it has seen before in a fraction of the first time.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager

import torch

# A compiled output may differ from the eager one by float rounding (inductor reorders and fuses reductions); a larger
# difference means a miscompile, and the signature stays eager. Relative to the output's largest magnitude; under
# bf16 autocast (8 mantissa bits, the GPU path) rounding alone reaches about 1e-2.
TOLERANCE = {None: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
MAX_SIGNATURES = 4  # compiled shapes per network (each one costs a compile and memory); others run eager


class _ProcessRule:
    """The compiled calls in flight and the compiles running, counted for every compiler of the process together, under
    one lock: dynamo's stance is process-wide."""

    def __init__(self):
        self.condition = threading.Condition()
        self.compiling = 0
        self.serving = 0


_RULE = _ProcessRule()


class BackgroundCompiler:
    """The thread that compiles, and the rule that keeps compiling out of requests: compiled code runs only while
    no compile is running (a request that finds one running goes eager rather than wait), and a compile starts only
    once no compiled call is running.

    Jobs run one at a time, in order, in a thread that exits once the queue is empty. A thread that ran tensor work
    keeps its own OpenMP team while it lives, and on these 2 cores an idle second team slowed every later forward in
    the sampling thread by about a fifth (76 % -> 62 % of the matmul peak at batch 16); a team ends with its thread.
    """

    def __init__(self):
        self._state = _RULE.condition  # one lock with the process-wide counts
        self._queue: deque[tuple[Future, object]] = deque()
        self._worker: threading.Thread | None = None

    def submit(self, job) -> Future:
        future = Future()
        with self._state:
            self._queue.append((future, job))
            if self._worker is None:
                self._worker = threading.Thread(target=self._drain, daemon=True, name="compile")
                self._worker.start()
        return future

    def _drain(self) -> None:
        while True:
            with self._state:
                if not self._queue:
                    self._worker = None
                    return
                future, job = self._queue.popleft()
                self._state.wait_for(lambda: _RULE.serving == 0)  # the stance is "default" from here on
                _RULE.compiling += 1
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(job())
                    except BaseException as error:  # the job's own failures are the caller's to read
                        future.set_exception(error)
            finally:
                with self._state:
                    _RULE.compiling -= 1
                    self._state.notify_all()

    @contextmanager
    def serving(self):
        """True while compiled code may run (and no compile starts), False if a compile is running now. The first
        compiled call in flight switches dynamo to "fail_on_recompile", the last one switches it back."""
        with self._state:
            free = _RULE.compiling == 0
            if free:
                if _RULE.serving == 0:
                    torch.compiler.set_stance("fail_on_recompile")  # called, not entered: set now, kept until reset
                _RULE.serving += 1
        try:
            yield free
        finally:
            if free:
                with self._state:
                    _RULE.serving -= 1
                    if _RULE.serving == 0:
                        torch.compiler.set_stance("default")
                    self._state.notify_all()

    def idle(self) -> None:
        """Wait until every compile asked for so far has finished and its thread has ended (tests, the benchmark)."""
        worker = self.submit(threading.current_thread).result()  # the thread that ran every job before this one
        worker.join()  # it exits once the queue is empty (if a job came after this one, that job has run too)


def signature(x, log_snr, labels, x0_previous) -> tuple:
    """What a compiled graph is specialised to: the device, the autocast dtype (None: off), and each input's shape,
    dtype and whether it is an inference tensor (dynamo guards on that too: a graph traced on one recompiles for the
    other)."""
    tensors = tuple(None if t is None else (tuple(t.shape), t.dtype, t.is_inference())
                    for t in (x, log_snr, labels, x0_previous))
    return (x.device, autocast_dtype(x.device), *tensors)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs in on this thread and device, or None where it is off."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


class CompiledNetwork:
    """A denoiser network that runs compiled where a compiled version of this call is ready, eager otherwise.

    Inputs go to the compiled network in channels_last (NHWC), the layout of the engine's weights and of oneDNN's
    fastest convolutions on a CPU. Attributes other than the call (config, parameters, ...) are the eager network's.
    """

    def __init__(self, network: torch.nn.Module, compiler: BackgroundCompiler, max_signatures: int = MAX_SIGNATURES):
        self.eager = network
        self.compiler = compiler
        self.max_signatures = max_signatures
        try:
            self.compiled = torch.compile(network, dynamic=False)
        except Exception as error:  # torch.compile unsupported here (e.g. this Python): every call eager
            self.compiled = None
            print(f"torch.compile is unavailable ({type(error).__name__}: {error}); {type(network).__name__} runs "
                  f"eager", file=sys.stderr, flush=True)
        self.ready: set[tuple] = set()
        self.asked: set[tuple] = set()  # ready, being compiled, or failed
        self.failures: dict[tuple, str] = {}
        self.compile_seconds: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.__dict__["eager"], name)

    def __call__(self, x, log_snr, labels=None, x0_previous=None):
        if torch.is_inference_mode_enabled():  # the backend samples under inference mode; anything else stays eager
            key = signature(x, log_snr, labels, x0_previous)
            if key in self.ready:
                with self.compiler.serving() as free:
                    if free:
                        try:
                            return self.compiled(channels_last(x), log_snr, labels, x0_previous)
                        except torch.cuda.OutOfMemoryError:  # the request's to handle; the compiled code is fine
                            raise
                        except Exception as error:  # a guard that held at compile time fails now: stay eager
                            self._fail(key, error)
            else:
                self.compile_for(x, log_snr, labels, x0_previous)
        return self.eager(x, log_snr, labels, x0_previous)

    def compile_for(self, x, log_snr, labels=None, x0_previous=None) -> Future | None:
        """Ask the background compiler for this call's signature (copies of the inputs are its example); None if it
        was asked before or this network has its MAX_SIGNATURES."""
        key = signature(x, log_snr, labels, x0_previous)
        with self._lock:
            if self.compiled is None or key in self.asked or len(self.asked) >= self.max_signatures:
                return None
            self.asked.add(key)
        example = [None if t is None else _copy(t) for t in (x, log_snr, labels, x0_previous)]
        return self.compiler.submit(lambda: self._compile(key, *example))

    def _compile(self, key, x, log_snr, labels, x0_previous) -> None:
        started = time.perf_counter()
        device, dtype = key[0], key[1]
        try:  # as the request ran: inference mode and its autocast (which is per thread)
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                compiled = self.compiled(channels_last(x), log_snr, labels, x0_previous)
                eager = self.eager(x, log_snr, labels, x0_previous)
            difference = float((compiled.float() - eager.float()).abs().max())
            tolerance = TOLERANCE.get(dtype, TOLERANCE[None]) * max(1.0, float(eager.float().abs().max()))
            if not difference <= tolerance:
                raise ValueError(f"compiled output differs from eager by {difference:.3g} (tolerance {tolerance:.3g})")
        except Exception as error:  # torch.compile unavailable (no C++ compiler, an unsupported op), or a miscompile
            self._fail(key, error)
            return
        self.compile_seconds[key] = time.perf_counter() - started
        self.ready.add(key)

    def _fail(self, key, error: Exception) -> None:
        self.ready.discard(key)
        self.failures[key] = f"{type(error).__name__}: {str(error)[:300]}"
        print(f"torch.compile of {type(self.eager).__name__} for inputs {key[2][0]} on {key[0]}: "
              f"{self.failures[key]}; these calls run eager", file=sys.stderr, flush=True)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A copy that is an inference tensor exactly when `t` is one."""
    with torch.inference_mode(t.is_inference()):
        return t.detach().clone()
