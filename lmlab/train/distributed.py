"""Multi-process data parallelism under ``torchrun``: DDP (gloo on CPU, NCCL on CUDA), optionally FSDP.

Launch any training command with ``torchrun --nproc-per-node N -m lmlab.cli pretrain ...``.
Each rank draws its own rows of every global batch (see :mod:`lmlab.data.windows`), so the
global batch is ``world_size * batch_size * grad_accum`` windows; gradients are
averaged across ranks; only rank 0 logs and writes files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lmlab.errors import LmlabError


@dataclass
class DistContext:
    """This process's place in the job: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and saves."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Return True when the environment says this process is one rank of a torchrun job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group when launched by torchrun; return this process's context.

    Uses NCCL for CUDA devices and gloo otherwise. A single process (no torchrun)
    gets rank 0 of 1 and no process group.
    """
    if not launched_by_torchrun():
        return DistContext(device=device)
    if not dist.is_available():
        raise LmlabError("this torch build has no torch.distributed; run a single process (without torchrun)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown(ctx: DistContext, wait_for_peers: bool = True) -> None:
    """Leave the process group (if any), after every rank has got here when ``wait_for_peers``.

    Pass ``wait_for_peers=False`` when leaving on an error: the other ranks may never
    arrive. Without the wait, a rank that tears gloo down while a peer still talks to it
    can abort at exit ("terminate called without an active exception").
    """
    if ctx.enabled and dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext, *, fsdp: bool = False) -> nn.Module:
    """Return ``model`` wrapped for data parallelism: DDP, or FSDP2 ``fully_shard`` when ``fsdp``.

    A single process gets the model back unchanged. FSDP shards each block listed in
    ``model.blocks``/``model.layers`` (if present) and then the root.
    """
    if not ctx.enabled:
        if fsdp:
            raise LmlabError("--fsdp needs several processes; launch with torchrun --nproc-per-node N")
        return model
    if fsdp:
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:
            raise LmlabError(
                "this torch has no FSDP2 (torch.distributed.fsdp.fully_shard); "
                "upgrade torch or drop --fsdp to use DDP"
            ) from None
        ctx.fsdp = True
        blocks = getattr(model, "blocks", None) or getattr(model, "layers", None)
        if isinstance(blocks, nn.ModuleList):
            for block in blocks:
                fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the user's module inside DDP and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, ctx: DistContext, last_micro_step: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on micro-steps before the last of an accumulation.

    DDP reduces gradients in backward; only the last micro-step needs it. FSDP2 is
    told through ``set_requires_gradient_sync``.
    """
    if not ctx.enabled or last_micro_step:
        if ctx.fsdp and hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(True)
        yield
        return
    if ctx.fsdp and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        yield
        return
    inner = model
    while hasattr(inner, "_orig_mod"):
        inner = inner._orig_mod
    with inner.no_sync() if hasattr(inner, "no_sync") else contextlib.nullcontext():
        yield


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over ranks in place and return it (unchanged for a single process)."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Return rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.enabled:
        dist.barrier()


def full_model_state(model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """Return the full (unsharded) model state dict on the CPU; under FSDP every rank must call it."""
    if ctx.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext) -> dict:
    """Return the optimiser state keyed by parameter names, with full tensors on the CPU.

    Name keys (not positions) make a checkpoint portable between a single process, DDP
    and FSDP. Under FSDP every rank must call it (the shards are gathered).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, ctx: DistContext
) -> None:
    """Load an optimiser state saved by :func:`full_optimizer_state` (sharding it under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    try:
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    except (KeyError, RuntimeError, ValueError) as e:
        raise LmlabError(
            f"the checkpoint's optimizer state does not fit this model ({type(e).__name__}: {e}); "
            "resume with the same model options"
        ) from None
