"""The one training loop for every gradient-trained model in the lab.

:class:`Trainer` trains any ``nn.Module`` with any objective (``objective(model,
batch) -> loss``) on any batch source with ``next()``, ``state_dict()`` and
``load_state_dict()``. It owns what every run needs: AdamW with parameter groups,
warmup + cosine schedule (on steps, tokens or elapsed time; or linear, constant, ULMFiT's
slanted triangular), ULMFiT's discriminative learning rates and gradual unfreezing over the
model's layer groups, gradient accumulation and
clipping, autocast precision, data parallelism, periodic evaluation, logging to
``metrics.jsonl``, atomic resumable checkpoints, exact resume, and graceful Ctrl-C.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lmlab.console import progress
from lmlab.device import autocast, grad_scaler, resolve_precision
from lmlab.errors import LmlabError
from lmlab.nn.linear import cpu_matmul_backend, training_layout, use_row_major_layout
from lmlab.train import checkpoint as ckpt
from lmlab.train import distributed as D
from lmlab.train.layer_groups import GradualUnfreezing, trainable_groups
from lmlab.train.log import RunLogger
from lmlab.train.mfu import mfu, peak_flops
from lmlab.train.objectives import Objective, loss_and_metrics
from lmlab.train.optim import Schedule, build_adamw, discriminative_scales, set_lr
from lmlab.train.options import LoopOptions, OptimOptions


class BatchSource(Protocol):
    """What the loop needs from a data source: batches and a resumable position."""

    def next(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainSettings(LoopOptions):
    """Everything the Trainer needs besides the model and data: the loop's options, the
    optimizer's, the resolved precision and whether to draw a progress bar."""

    optim: OptimOptions = field(default_factory=OptimOptions)
    precision: str = "auto"
    show_progress: bool = True


@dataclass
class TrainResult:
    """How a :meth:`Trainer.fit` call ended."""

    step: int
    tokens: int
    elapsed: float
    interrupted: bool = False
    last_record: dict[str, Any] = field(default_factory=dict)


@dataclass
class _StepResult:
    """Figures of one optimizer step, already combined over ranks."""

    loss: float
    stop: bool
    elapsed: float
    tokens: int
    grad_norm: float
    seconds: float
    metrics: dict[str, float]


class Trainer:
    """Train ``model`` with ``objective`` on batches from ``batches``, writing to ``out_dir``.

    ``evaluator(model) -> {name: value}`` runs every ``eval_interval`` steps and at the
    end (all ranks call it). ``write_weights(model, path)`` / ``read_weights(model, path)``
    save and load the weights file (default: plain safetensors of the state dict).
    ``model_config`` (a JSON-ready dict) is stored with each checkpoint; resuming with a
    different one is refused. ``flops_per_token`` (training FLOPs per token) enables MFU.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        batches: BatchSource,
        settings: TrainSettings,
        *,
        out_dir: str | Path,
        device: torch.device,
        dist: D.DistContext | None = None,
        evaluator: Callable[[nn.Module], dict[str, float]] | None = None,
        write_weights: Callable[[nn.Module, Path], None] | None = None,
        read_weights: Callable[[nn.Module, Path], None] | None = None,
        model_config: dict[str, Any] | None = None,
        flops_per_token: float | None = None,
        fsdp: bool = False,
    ):
        self.raw_model = model
        self.objective = objective
        self.batches = batches
        self.s = settings
        self.out_dir = Path(out_dir)
        self.device = device
        self.dist = dist or D.DistContext(device=device)
        self.evaluator = evaluator
        self.write_weights = write_weights or _write_safetensors
        self.read_weights = read_weights or _read_safetensors
        self.model_config = model_config or {}
        self.flops_per_token = flops_per_token
        self.fsdp = fsdp
        self.precision = resolve_precision(device, settings.precision)
        if self.precision == "fp16" and device.type != "cuda":
            raise LmlabError(
                f"--precision fp16 needs a CUDA GPU (loss scaling); on {device.type} use bf16 or fp32"
            )
        if settings.max_steps is None and settings.max_tokens is None and settings.time_budget is None:
            raise LmlabError("no training length given; set --max-steps, --max-tokens or --time-budget")
        for name in ("max_steps", "max_tokens", "time_budget"):
            value = getattr(settings, name)
            if value is not None and value <= 0:
                raise LmlabError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if settings.grad_accum < 1:
            raise LmlabError("--grad-accum must be at least 1")
        if settings.gradual_unfreeze < 0:
            raise LmlabError(f"--gradual-unfreeze must be a number of steps >= 0 (0: off), got "
                             f"{settings.gradual_unfreeze}")
        if settings.gradual_unfreeze and self.dist.enabled:
            # DDP and FSDP fix the set of parameters that get gradients when they wrap the model
            raise LmlabError("--gradual-unfreeze runs in one process; drop it or launch without torchrun")
        settings.optim.check()
        if settings.optim.warmup_fraction and settings.max_steps is None:
            raise LmlabError(f"--warmup-fraction {settings.optim.warmup_fraction} needs --max-steps (or "
                             "--epochs); with --max-tokens or --time-budget give --warmup-fraction 0 "
                             "--warmup-steps N")
        self._stop_requested = False

    # ---------------------------------------------------------------- schedule
    def progress_fraction(self, step: int, tokens: int, elapsed: float) -> float:
        """Return training progress in [0, 1]: the largest fraction of any set limit used up."""
        s = self.s
        fractions = [0.0]
        if s.max_steps is not None:
            fractions.append(step / s.max_steps)
        if s.max_tokens is not None:
            fractions.append(tokens / s.max_tokens)
        if s.time_budget is not None:
            fractions.append(elapsed / s.time_budget)
        return max(fractions)

    # ---------------------------------------------------------------- state
    def _trainer_state(self, step: int, tokens: int, elapsed: float) -> dict[str, Any]:
        rngs = [ckpt.rng_state()]
        if self.dist.enabled:
            rngs = [None] * self.dist.world_size
            torch.distributed.all_gather_object(rngs, ckpt.rng_state())
        return {
            "tokens": tokens,
            "elapsed": elapsed,
            "data": self.batches.state_dict(),
            "rng": rngs,
            "world_size": self.dist.world_size,
            "model_config": self.model_config,
            "settings": asdict(self.s),
            "precision": self.precision,
            "threads": torch.get_num_threads(),
            "cpu_matmul": cpu_matmul_backend(),
        }

    def _save(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, tokens: int, elapsed: float
    ) -> None:
        """Write a checkpoint (rank 0 writes; under FSDP all ranks gather first)."""
        state = D.full_model_state(model, self.dist) if self.dist.fsdp else None
        opt_state = D.full_optimizer_state(model, optimizer, self.dist)
        trainer_state = self._trainer_state(step, tokens, elapsed)
        error = None
        if self.dist.is_main:
            raw = self.raw_model

            def write(path: Path) -> None:
                if state is not None:
                    with _swapped_state(raw, state):
                        self.write_weights(raw, path)
                else:
                    self.write_weights(raw, path)

            tensors = state if state is not None else raw.state_dict()
            try:
                ckpt.save_checkpoint(
                    self.out_dir,
                    step,
                    write_weights=write,
                    optimizer_state=opt_state,
                    trainer_state=trainer_state,
                    weights_bytes=sum(t.numel() * t.element_size() for t in tensors.values()
                                      if isinstance(t, torch.Tensor)),
                )
            except LmlabError as e:
                error = str(e)
        error = D.broadcast_object(error, self.dist)
        if error:
            raise LmlabError(error)

    def _restore(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, loaded: ckpt.Checkpoint
    ) -> tuple[int, int, float]:
        ts = loaded.trainer_state
        # A parameter that had no gradient yet (frozen by gradual unfreezing, or unused, like an LM head
        # under a task head) has no optimizer state: hold it out of the load, which would otherwise
        # refuse the checkpoint or give it a state an uninterrupted run does not have.
        with_state = set(loaded.optimizer_state.get("state", {}))
        stateless = [p for n, p in D.unwrap_model(model).named_parameters()
                     if p.requires_grad and n not in with_state]
        for p in stateless:
            p.requires_grad_(False)
        try:
            D.load_full_optimizer_state(model, optimizer, loaded.optimizer_state, self.dist)
        finally:
            for p in stateless:
                p.requires_grad_(True)
        self.batches.load_state_dict(ts["data"])
        rngs = ts["rng"]
        if len(rngs) == self.dist.world_size:
            ckpt.set_rng_state(rngs[self.dist.rank])
        else:
            ckpt.set_rng_state(rngs[0])
        return int(ts["step"]), int(ts["tokens"]), float(ts["elapsed"])

    def _check_model_config(self, saved: dict[str, Any]) -> None:
        mine = self.model_config
        if saved != mine:
            keys = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            diffs = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {mine.get(k)!r}" for k in keys[:6])
            raise LmlabError(
                f"--resume: the model config differs from the checkpoint's ({diffs}); "
                "resume with the same model options, or start a new run in another --out"
            )

    # ---------------------------------------------------------------- loop
    def fit(self, resume: bool = False) -> TrainResult:
        """Train until a limit (steps, tokens, time, stop_at_step) is reached; return a TrainResult.

        With ``resume`` the latest checkpoint of ``out_dir`` is loaded first (model
        config checked). Saves at the end, every ``save_interval`` steps and on
        Ctrl-C / SIGTERM (then ``interrupted`` is True). A non-finite loss raises
        LmlabError naming the step, without overwriting the last checkpoint.
        """
        loaded = None
        if resume:
            loaded = ckpt.load_checkpoint(self.out_dir)
            self._check_model_config(loaded.trainer_state.get("model_config", {}))
        saved = loaded.trainer_state if loaded is not None else {}
        with (_deterministic(self.s.deterministic, saved.get("threads"), saved.get("cpu_matmul")),
              training_layout(self.raw_model)):
            return self._fit(loaded)

    def _fit(self, loaded: ckpt.Checkpoint | None) -> TrainResult:
        """The body of :meth:`fit`, from the loaded checkpoint (None for a new run)."""
        s, o, dist = self.s, self.s.optim, self.dist
        resume = loaded is not None
        if loaded is not None:
            self.read_weights(self.raw_model, loaded.weights_path)
        self.raw_model.to(self.device)
        groups = trainable_groups(self.raw_model) if o.group_lr_factor() > 1 or s.gradual_unfreeze else []
        scales = discriminative_scales(groups, o.group_lr_factor()) if o.group_lr_factor() > 1 else None
        model = D.wrap_model(self.raw_model, dist, fsdp=self.fsdp)
        optimizer = build_adamw(
            model, lr=o.lr, weight_decay=o.weight_decay, betas=(o.beta1, o.beta2), device=self.device,
            lr_scales=scales,
        )
        # Made after the optimizer, which must hold every trainable parameter, frozen ones included.
        unfreezing = GradualUnfreezing(groups, s.gradual_unfreeze) if s.gradual_unfreeze else None
        step, tokens, elapsed = 0, 0, 0.0
        if loaded is not None:
            step, tokens, elapsed = self._restore(optimizer, model, loaded)
        if s.compile:
            model = _compile(model)
        scaler = grad_scaler(self.device, self.precision)
        warmup = o.warmup_steps
        if o.warmup_fraction and s.max_steps is not None:
            warmup = max(1, round(o.warmup_fraction * s.max_steps))
        schedule = Schedule(lr=o.lr, min_lr=o.min_lr, warmup_steps=warmup, kind=o.schedule,
                            cut_frac=o.stlr_cut_frac, ratio=o.stlr_ratio)
        # The CPU peak is measured on random matrices: draw them from a forked RNG, so a resumed run
        # (whose RNG state was just restored) sees the same dropout masks as an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            peak = peak_flops(self.device, self.precision) if self.flops_per_token and dist.is_main else 0.0
        params = [p for p in model.parameters() if p.requires_grad]

        logger = RunLogger(self.out_dir, resume_step=step if resume else None) if dist.is_main else None
        show = s.show_progress and dist.is_main
        bar = progress(
            total=s.max_steps, initial=step, desc="train", unit="step", disable=None if show else True
        )
        last_saved = step if loaded is not None else None
        start_step = step
        interval_tokens, interval_time = 0, 0.0
        next_eval_s = _next_multiple(elapsed, s.eval_interval_s)
        record: dict[str, Any] = {}
        model.train()
        try:
            with self._signal_guard(), _compile_errors(s.compile, self.out_dir):
                while not self._finished(step, tokens, elapsed):
                    frac = self.progress_fraction(step, tokens, elapsed)
                    lr = schedule(step, frac)
                    set_lr(optimizer, lr, o.lr)
                    n_unfrozen = unfreezing.apply(step) if unfreezing is not None else None
                    st = self._train_step(model, optimizer, scaler, params, elapsed)
                    elapsed = st.elapsed
                    if not math.isfinite(st.loss):
                        self._fail_nonfinite(logger, step + 1, st.loss, lr, last_saved)
                    step += 1
                    tokens += st.tokens
                    if s.time_budget is not None and step == 1 and elapsed >= s.time_budget:
                        raise LmlabError(
                            f"--time-budget {s.time_budget:g}s is too small to take one step (the first step "
                            f"took {st.seconds:.2f}s); raise it to at least {math.ceil(4 * st.seconds)}"
                        )
                    interval_tokens += st.tokens
                    interval_time += st.seconds
                    record = {}
                    if step % max(s.log_interval, 1) == 0 or step == start_step + 1:
                        tps = interval_tokens / interval_time if interval_time > 0 else 0.0
                        record.update(loss=st.loss, lr=lr, tokens=tokens, tokens_per_s=round(tps, 1))
                        record.update(grad_norm=st.grad_norm, **st.metrics)
                        if n_unfrozen is not None:
                            record["unfrozen_groups"] = n_unfrozen
                        if self.flops_per_token and peak and tps > 0:
                            record["mfu"] = round(mfu(self.flops_per_token, tps, peak * dist.world_size), 5)
                        interval_tokens, interval_time = 0, 0.0
                        extra = {"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {}
                        bar.set_postfix(loss=f"{st.loss:.4f}", tok_s=f"{tps:,.0f}", **extra)
                    done = st.stop or self._finished(step, tokens, elapsed)
                    periodic = s.eval_interval > 0 and step % s.eval_interval == 0
                    if elapsed >= next_eval_s:
                        periodic = True
                        next_eval_s = _next_multiple(elapsed, s.eval_interval_s)
                    if self.evaluator is not None and (done or periodic):
                        record.update(self.evaluator(model))
                    if record and logger is not None:
                        record = logger.log(step, **record, elapsed=round(elapsed, 3))
                    bar.update(1)
                    if st.stop:
                        self._save(model, optimizer, step, tokens, elapsed)
                        return TrainResult(step, tokens, elapsed, interrupted=True, last_record=record)
                    if s.save_interval > 0 and step % s.save_interval == 0 and not done:
                        self._save(model, optimizer, step, tokens, elapsed)
                        last_saved = step
                if last_saved != step:
                    self._save(model, optimizer, step, tokens, elapsed)
                return TrainResult(step, tokens, elapsed, last_record=record)
        finally:
            bar.close()
            if logger is not None:
                logger.close()
            if unfreezing is not None:
                unfreezing.restore()

    def _finished(self, step: int, tokens: int, elapsed: float) -> bool:
        """True when a training limit or this session's stop_at_step is reached."""
        at_stop = self.s.stop_at_step is not None and step >= self.s.stop_at_step
        return at_stop or self.progress_fraction(step, tokens, elapsed) >= 1.0

    def _train_step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        params: list[torch.Tensor],
        elapsed: float,
    ) -> _StepResult:
        """Run one optimizer step and agree on its figures across ranks."""
        t0 = time.perf_counter()
        loss, metrics, n_tokens = self._accumulate(model, scaler)
        grad_norm = self._update(params, optimizer, scaler)
        dt = time.perf_counter() - t0
        # One all-reduce carries the loss, the stop flag, elapsed time, tokens and objective metrics, so
        # every rank takes the same decisions (stop, schedule) in lockstep.
        names = sorted(metrics)
        values = [loss, float(self._stop_requested), elapsed + dt, float(n_tokens)]
        values += [metrics[k] for k in names]
        vec = D.all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self.device), self.dist)
        w = self.dist.world_size
        return _StepResult(
            loss=float(vec[0]) / w,
            stop=float(vec[1]) > 0,
            elapsed=float(vec[2]) / w,
            tokens=int(round(float(vec[3]))),
            grad_norm=grad_norm,
            seconds=dt,
            metrics={k: float(vec[4 + i]) / w for i, k in enumerate(names)},
        )

    def _fail_nonfinite(
        self, logger: RunLogger | None, step: int, loss: float, lr: float, last_saved: int | None
    ) -> None:
        """Log the bad step and raise LmlabError; the weights may be spoilt, so nothing is saved."""
        if logger is not None:
            logger.log(step, loss=loss, lr=lr)
        kept = (
            f"the last good checkpoint (step {last_saved}) is kept in {self.out_dir / 'state'}"
            if last_saved is not None
            else "no checkpoint had been saved"
        )
        raise LmlabError(
            f"the loss became {loss} at step {step}; training stopped and {kept}; "
            "lower --lr, raise --warmup-steps or use --precision fp32"
        )

    def _accumulate(
        self, model: nn.Module, scaler: torch.amp.GradScaler
    ) -> tuple[float, dict[str, float], int]:
        """Run ``grad_accum`` forward/backward micro-steps; return mean loss, mean metrics, local tokens."""
        n = self.s.grad_accum
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        metric_sums: dict[str, float] = {}
        n_tokens = 0
        for micro in range(n):
            batch = self.batches.next()
            ids = batch.get("input_ids")
            n_tokens += int(ids.numel()) if ids is not None else 0
            with D.no_grad_sync(model, self.dist, last_micro_step=micro == n - 1):
                with autocast(self.device, self.precision):
                    loss, metrics = loss_and_metrics(self.objective(model, batch))
                scaler.scale(loss / n).backward()
            loss_sum += loss.detach().float()
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v) / n
        return float(loss_sum) / n, metric_sums, n_tokens

    def _update(
        self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
    ) -> float:
        """Clip, step and zero the gradients; return the gradient norm before clipping (0 if not measured)."""
        grad_norm = 0.0
        if self.s.optim.grad_clip > 0:
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.s.optim.grad_clip))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    @contextlib.contextmanager
    def _signal_guard(self) -> Iterator[None]:
        """Turn the first Ctrl-C / SIGTERM into a stop request honoured at the end of the step.

        A second Ctrl-C interrupts at once. Only installed in the main thread.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):  # noqa: ARG001
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)", flush=True)

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)


@contextlib.contextmanager
def _deterministic(on: bool, threads: int | None, matmul: str | None) -> Iterator[None]:
    """With ``on``, run the enclosed training bitwise-reproducibly; restore the settings after.

    Turns on ``torch.use_deterministic_algorithms`` (warn-only: an op without a deterministic
    kernel warns instead of failing) and, when resuming, uses the intra-op thread count and
    CPU matmul route the checkpoint was written with (both change the summation order,
    hence the low bits of every loss).
    """
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.get_num_threads(), os.environ.get("LMLAB_CPU_MATMUL"))
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(int(threads))
    if matmul is not None:
        os.environ["LMLAB_CPU_MATMUL"] = matmul
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.set_num_threads(before[2])
        if before[3] is None:
            os.environ.pop("LMLAB_CPU_MATMUL", None)
        else:
            os.environ["LMLAB_CPU_MATMUL"] = before[3]


def _next_multiple(x: float, interval: float) -> float:
    """The first multiple of ``interval`` above ``x`` (inf when ``interval`` is 0: never)."""
    return (math.floor(x / interval) + 1) * interval if interval > 0 else math.inf


@contextlib.contextmanager
def _swapped_state(model: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily give an FSDP-sharded ``model`` plain full tensors so a weights writer can save it."""
    holders = []
    for name, tensor in state.items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if attr in module._parameters:
            holders.append((module, attr, module._parameters[attr]))
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    try:
        yield
    finally:
        for module, attr, p in holders:
            module._parameters[attr] = p


def _compile_failed(e: BaseException) -> LmlabError:
    """The one-line error for a failed ``torch.compile`` (its message can run to pages)."""
    e = getattr(e, "inner_exception", None) or e  # Dynamo wraps the backend's own error
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    first = first if len(first) <= 200 else first[:197] + "..."
    return LmlabError(f"--compile failed ({type(e).__name__}: {first}); install a C++ compiler "
                      "(e.g. g++) and Python headers, or drop --compile")


def _compile(model: nn.Module) -> nn.Module:
    try:
        return torch.compile(model)
    except Exception as e:  # torch.compile raises many types when no compiler toolchain is present
        raise _compile_failed(e) from None


def _is_compile_error(e: BaseException) -> bool:
    """True for the errors of torch.compile's lazy compilation (Dynamo, Inductor, the C++ build)."""
    try:
        from torch._dynamo.exc import TorchDynamoException
    except ImportError:  # a torch without Dynamo cannot have compiled anything
        return False
    return isinstance(e, TorchDynamoException) or type(e).__module__.startswith(("torch._dynamo",
                                                                                 "torch._inductor"))


@contextlib.contextmanager
def _compile_errors(compiled: bool, out_dir: Path) -> Iterator[None]:
    """Turn a compilation error of a ``--compile`` run into a one-line LmlabError.

    torch.compile is lazy: it compiles at the model's first call inside the loop (and again
    for a new input shape or mode, e.g. the first evaluation), so that is where a missing
    compiler shows up, not at the torch.compile call.
    """
    try:
        yield
    except Exception as e:
        if not compiled or not _is_compile_error(e):
            raise
        err = _compile_failed(e)
        kept = ckpt.latest_step(out_dir)
        if kept is not None:
            err = LmlabError(f"{err}; the checkpoint of step {kept} in {out_dir / ckpt.STATE_DIR} is kept")
        raise err from None


def _write_safetensors(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    use_row_major_layout(model)  # safetensors writes contiguous tensors only
    save_model(model, str(path))


def _read_safetensors(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(path), strict=True, device="cpu")
