"""One training step replayed from a CUDA graph, and the rule that decides where it applies.

:class:`CapturedStep` runs a step function (``gptmini.core.step.guarded_step`` over static batch
buffers) eagerly on a side stream for a few warmup steps (lazy inits, torch.compile, AdamW's state),
then captures it once with ``torch.cuda.graph`` and replays it every later step: forward, backward,
the one grad norm, the non-finite verdict, clipping and the fused AdamW update are one graph launch.
Built from NVIDIA NeMo's CUDAGraphCallback and torchtitan's cudagraph.py; ours because both capture
around their own loops (NeMo: Lightning's closure with patched autocast/DDP/zero_grad), while
gptmini captures only its own step function, so the eager twin of the graph is that same function.

What a graph freezes is kept out of it or in device tensors: the lr lives in one tensor per param
group (fused AdamW reads it on the device), refreshed in place from the LambdaLR schedule before
every step (:func:`lr_tensors`, :func:`lrs_on_device`); the batch is copied into the same
buffers every step (:meth:`CapturedStep.load_batch`); grads are zeroed in place, never set to None.
:func:`choose_step_path` is the one home of "where the captured step applies". Lightning-free.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from gptmini.core.config import ConfigError
from gptmini.core.step import PRECISIONS

CAPTURED = "captured"
EAGER = "eager"
# torch.compile modes that capture CUDA graphs themselves: a graph inside a graph is refused.
COMPILE_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")
# Eager steps before capture: the first allocates AdamW's state and compiles, the others settle
# lazily initialised kernels (cuBLAS workspaces, autotuning). PyTorch's whole-network example uses 3.
WARMUP_STEPS = 3


@dataclass(frozen=True)
class StepPath:
    """The training step a run takes, and why (printed once at fit start)."""

    name: str  # CAPTURED or EAGER
    reason: str

    @property
    def captured(self) -> bool:
        return self.name == CAPTURED

    def line(self) -> str:
        return f"training step: {self.name} ({self.reason})"


def choose_step_path(
    setting: bool | None,
    *,
    device: torch.device | str,
    precision: str,
    accumulate_grad_batches: int = 1,
    grad_scaler: bool = False,
    world_size: int = 1,
    single_device: bool = True,
    fused: bool = True,
    clip_algorithm: str | None = None,
    compile_mode: str | None = None,
    closure_hooks: Sequence[str] = (),
) -> StepPath:
    """Where the captured step applies: CUDA, one process, no accumulation, no fp16 scaler, fused
    AdamW, clipping by norm, no torch.compile mode with its own graphs, and nothing else that must run
    between backward and the optimizer step (``closure_hooks``: who overrides Lightning's closure
    hooks; they would run once, at capture). ``setting`` is ``model.capture``: null = wherever it
    applies, false = never; true where it cannot apply raises :class:`ConfigError` naming why."""
    if setting is False:
        return StepPath(EAGER, "model.capture=false")
    reasons = []
    if torch.device(device).type != "cuda":
        reasons.append(f"CUDA graphs need a CUDA device, this run is on {torch.device(device).type}")
    if accumulate_grad_batches > 1:
        reasons.append(f"trainer.accumulate_grad_batches={accumulate_grad_batches}: one graph is one optimizer step")
    if grad_scaler:
        reasons.append("fp16 with a grad scaler (its skip-and-rescale reads the host)")
    elif str(precision) not in PRECISIONS:
        reasons.append(f"precision {precision} (the captured step autocasts {', '.join(PRECISIONS)})")
    if world_size > 1 or not single_device:
        reasons.append("several processes or a distributed strategy (DDP not yet proven captured)")
    if not fused:
        reasons.append("model.optim.fused=false (the device-side skip of a bad step needs fused AdamW)")
    if clip_algorithm not in (None, "norm"):
        reasons.append(f"trainer.gradient_clip_algorithm={clip_algorithm} (the step clips by norm)")
    if compile_mode in COMPILE_MODES_WITH_GRAPHS:
        reasons.append(f"model.compile_mode={compile_mode} captures CUDA graphs itself")
    if closure_hooks:
        reasons.append(f"{', '.join(closure_hooks)} would run only once, at capture")
    if reasons:
        if setting:
            raise ConfigError(
                f"model.capture=true cannot apply: {reasons[0]}. Set model.capture: null (capture "
                "where it applies) or false."
            )
        return StepPath(EAGER, reasons[0])
    why = "model.capture=true" if setting else "model.capture=null: CUDA, one process, no accumulation"
    return StepPath(CAPTURED, why)


def lr_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """One device tensor per param group for its lr (fused AdamW reads a tensor lr on the device, so
    a graph replays with the lr of the step, not the one at capture). Filled by :func:`lrs_on_device`."""
    return [torch.zeros((), dtype=torch.float32, device=g["params"][0].device) for g in optimizer.param_groups]


@contextlib.contextmanager
def lrs_on_device(optimizer: torch.optim.Optimizer, lrs: list[torch.Tensor]) -> Iterator[None]:
    """For one step: each group's lr (the float LambdaLR set) copied into its tensor, in place, and
    the tensor in the group while the step (or its capture) runs; the float back afterwards, so the
    scheduler, LearningRateMonitor and checkpoints see plain floats as on every other path."""
    values = [g["lr"] for g in optimizer.param_groups]
    for group, lr, value in zip(optimizer.param_groups, lrs, values):
        lr.copy_(value) if isinstance(value, torch.Tensor) else lr.fill_(value)  # no host read
        group["lr"] = lr
    try:
        yield
    finally:
        for group, value in zip(optimizer.param_groups, values):
            group["lr"] = value


@contextlib.contextmanager
def capturable(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Mark the param groups capturable during the capture only: torch refuses to capture ``step()``
    otherwise, and warns when a capturable optimizer steps uncaptured. Fused AdamW keeps its step
    counts on the device either way, so the eager steps are the same computation."""
    before = [g.get("capturable", False) for g in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["capturable"] = True
    try:
        yield
    finally:
        for group, flag in zip(optimizer.param_groups, before):
            group["capturable"] = flag


def _tensors(batch: object) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, (list, tuple)):
        return [t for item in batch for t in _tensors(item)]
    if isinstance(batch, dict):
        return [t for item in batch.values() for t in _tensors(item)]
    return []


def _rebuild(batch: object, tensors: list[torch.Tensor]) -> object:
    """``batch`` with its tensors replaced, in order, by ``tensors``."""
    it = iter(tensors)

    def swap(x: object) -> object:
        if isinstance(x, torch.Tensor):
            return next(it)
        if isinstance(x, (list, tuple)):
            return type(x)(swap(i) for i in x)
        if isinstance(x, dict):
            return {k: swap(v) for k, v in x.items()}
        return x

    return swap(batch)


class CapturedStep:
    """``step(batch) -> loss`` run eagerly for :data:`WARMUP_STEPS` on a side stream, then captured
    once and replayed.

    Call :meth:`load_batch` with each step's batch (on the device), then the instance itself. The
    returned loss tensor is the graph's output: overwritten by the next replay (clone it to keep it).
    A batch of another shape or dtype than the captured one runs the same function eagerly.
    """

    def __init__(
        self,
        step: Callable[[object], torch.Tensor],
        warmup_steps: int = WARMUP_STEPS,
        capture_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        graphs: bool = True,
    ) -> None:
        """Args:
        step: The step function, called with the (static) batch.
        warmup_steps: Eager steps before capture.
        capture_context: Entered around the capture only (e.g. :func:`capturable`).
        graphs: False: never capture, run ``step`` eagerly every time on the current stream (the
            eager twin on a CPU, same buffers and calls).
        """
        self.graphs = graphs
        self.step = step
        self.warmup_steps = warmup_steps
        self.capture_context = capture_context
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: object = None
        self._static: list[torch.Tensor] = []
        self._batch: object = None
        self._eager = False
        self._loss: torch.Tensor | None = None
        self._stream: torch.cuda.Stream | None = None
        self.eager_steps = 0
        self.failure: str | None = None  # why the capture failed, if it did

    def load_batch(self, batch: object) -> None:
        """Copy ``batch`` into the static buffers (allocated at the first batch), on the device."""
        tensors = _tensors(batch)
        if not self._static:
            self._static = [t.detach().clone() for t in tensors]
            self.static_batch = _rebuild(batch, self._static)
        self._eager = len(tensors) != len(self._static) or any(
            t.shape != s.shape or t.dtype != s.dtype for t, s in zip(tensors, self._static)
        )
        if self._eager:
            self._batch = batch
            return
        for s, t in zip(self._static, tensors):
            s.copy_(t, non_blocking=True)
        self._batch = self.static_batch

    def __call__(self) -> torch.Tensor:
        if not self.graphs:
            self.eager_steps += 1
            return self.step(self._batch)
        if self._eager or (self.graph is None and self.eager_steps < self.warmup_steps):
            self.eager_steps += 1
            return self._side_stream(lambda: self.step(self._batch))
        if self.graph is None:
            return self._capture()
        self.graph.replay()
        return self._loss

    def _side_stream(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        # Warmup on a side stream, as torch.cuda.graph's docs ask: the capture stream then sees no
        # lazily initialised state that only the default stream knows.
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        current = torch.cuda.current_stream()
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            out = fn()
        current.wait_stream(self._stream)
        return out

    def _capture(self) -> torch.Tensor:
        try:
            with self.capture_context():
                self.graph, self._loss = self._record(lambda: self.step(self.static_batch))
        except Exception as e:  # noqa: BLE001 - any capture failure: say why, train on eagerly
            # Capture only records kernels: nothing ran, weights and AdamW state are as before.
            self.graph, self.graphs = None, False
            self.failure = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            warnings.warn(
                f"training step: CUDA graph capture failed ({self.failure}); this run continues with "
                "the same step, eager. Set model.capture: false to skip the attempt.",
                stacklevel=2,
            )
            return self()
        self.graph.replay()  # capture records, it does not run: this step's work happens here
        return self._loss

    def _record(self, fn: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture ``fn`` into a new graph; (graph, its output tensor). Nothing runs until a replay."""
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the DataLoader's pin-memory thread may run CUDA calls during the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = fn()
        return graph, out
