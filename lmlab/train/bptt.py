"""Truncated backpropagation through time for recurrent LMs, as pieces of the one training loop.

:class:`StreamWindows` cuts the token array into ``B`` contiguous streams (one per batch
row, as Zaremba et al. and AWD-LSTM batchify a corpus) and yields consecutive ``(B, T)``
windows of them, so row b of window k+1 continues row b of window k. The tail of each
stream shorter than T is skipped; after the last window a new epoch starts at the
beginning again.

:class:`CarriedStateLoss` is the objective: next-token cross-entropy of
``model(ids, state)``, keeping the returned state, detached (gradients stop at the
window boundary), for the next window, and starting from zeros on a new epoch.

:class:`TruncatedBPTT` bundles both for :class:`lmlab.train.loop.Trainer`: it is the batch
source, its ``objective`` attribute the loss, and its ``state_dict`` holds the data
position *and* the carried hidden state, so an exact resume continues the same state.

:func:`stream_nll` evaluates a recurrent model the same way: state carried through
the whole split.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.nn.losses import token_cross_entropy

State = tuple[torch.Tensor, ...]


class StreamWindows:
    """Consecutive ``(B, T)`` windows of ``B`` contiguous streams of ``tokens``.

    Each call to :meth:`next` returns ``{"input_ids": (B, T), "labels": (B, T), "reset": ()}``
    (int64 on ``device``; ``reset`` a CPU bool, True on the first window of an epoch).
    Under data parallelism there are ``batch_size * world_size`` streams and rank r
    takes rows ``r::world_size``.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        block_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        split: str = "train",
    ):
        if block_size < 1 or batch_size < 1:
            raise LmlabError("--block-size and --batch-size must be at least 1")
        n_streams = batch_size * world_size
        stream_len = (len(tokens) - 1) // n_streams  # every stream needs one more token for its labels
        if stream_len < block_size:
            raise LmlabError(
                f"the {split} split has {len(tokens)} tokens: too few for {n_streams} streams of at least "
                f"block size {block_size} + 1; lower --batch-size or --block-size, or prepare more data"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.stream_len = stream_len
        self.windows_per_epoch = stream_len // block_size
        self.starts = (np.arange(n_streams, dtype=np.int64) * stream_len)[rank::world_size]
        self.epoch = 0
        self.window = 0

    @property
    def tokens_per_batch(self) -> int:
        """Tokens this rank sees per batch (batch_size * block_size)."""
        return self.batch_size * self.block_size

    def next(self) -> dict[str, torch.Tensor]:
        """Return the next window of every stream and advance (wrapping to a new epoch)."""
        t = self.block_size
        offset = self.window * t
        rows = np.stack([np.asarray(self.tokens[s + offset: s + offset + t + 1], dtype=np.int64)
                         for s in self.starts])
        reset = self.window == 0
        self.window += 1
        if self.window == self.windows_per_epoch:
            self.window = 0
            self.epoch += 1
        x = torch.from_numpy(rows).to(self.device)
        return {"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous(),
                "reset": torch.tensor(reset)}

    def state_dict(self) -> dict[str, Any]:
        """Return the data position (epoch, window) and the shape it depends on."""
        return {"kind": "stream_windows", "epoch": self.epoch, "window": self.window,
                "block_size": self.block_size, "global_batch": self.batch_size * self.world_size,
                "tokens": int(len(self.tokens))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`; raise LmlabError if the shape differs."""
        if state.get("kind") != "stream_windows":
            raise LmlabError(f"the checkpoint's data position is of kind {state.get('kind')!r}, not "
                             "stream_windows; resume with the trainer that wrote it")
        mine = (self.block_size, self.batch_size * self.world_size, int(len(self.tokens)))
        saved = (state["block_size"], state["global_batch"], state["tokens"])
        if mine != saved:
            raise LmlabError(
                f"the checkpoint was written with block size {saved[0]}, {saved[1]} streams and "
                f"{saved[2]} tokens; this run has {mine[0]}, {mine[1]} and {mine[2]}; resume with the same "
                "--block-size, global batch and data"
            )
        self.epoch, self.window = int(state["epoch"]), int(state["window"])


def encode_state(state: State | None) -> str | None:
    """Return a recurrent state as JSON-ready text (base64 of a torch.save; exact, any dtype)."""
    if state is None:
        return None
    buf = io.BytesIO()
    torch.save([s.detach().cpu() for s in state], buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_state(text: str | None, device: torch.device | str = "cpu") -> State | None:
    """Inverse of :func:`encode_state`: the tensors on ``device``, or None."""
    if text is None:
        return None
    tensors = torch.load(io.BytesIO(base64.b64decode(text)), map_location=device, weights_only=True)
    return tuple(tensors)


class CarriedStateLoss:
    """Next-token loss of a stateful model, carrying the final state (detached) to the next window.

    The model is called as ``model(ids, state, return_state=True) -> (logits, new_state)``
    (``state`` None means zeros). The state resets when a batch has ``reset`` set (a new
    epoch) and, with ``carry=False``, before every window (a stateless baseline).
    """

    def __init__(self, carry: bool = True):
        self.carry = carry
        self.state: State | None = None

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the mean cross-entropy of the window and keep the model's final state."""
        if not self.carry or bool(batch.get("reset", False)):
            self.state = None
        logits, new_state = model(batch["input_ids"], self.state, return_state=True)
        self.state = tuple(s.detach() for s in new_state)
        return token_cross_entropy(logits, batch["labels"])


class TruncatedBPTT:
    """Batch source + objective of truncated BPTT for the Trainer, resumable together.

    ``Trainer(model, bptt.objective, bptt, ...)``; the trainer's checkpoint then holds
    the stream position and the carried state of every rank.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        block_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        carry: bool = True,
    ):
        self.windows = StreamWindows(tokens, block_size=block_size, batch_size=batch_size, rank=rank,
                                     world_size=world_size, device=device)
        self.objective = CarriedStateLoss(carry=carry)

    @property
    def tokens_per_batch(self) -> int:
        """Tokens this rank sees per batch."""
        return self.windows.tokens_per_batch

    def next(self) -> dict[str, torch.Tensor]:
        """Return the next window batch."""
        return self.windows.next()

    def state_dict(self) -> dict[str, Any]:
        """Return the stream position and the carried states (one per rank; a collective under DDP)."""
        mine = encode_state(self.objective.state)
        states = [mine]
        w = self.windows
        if w.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * w.world_size
            torch.distributed.all_gather_object(states, mine)
        return {"kind": "truncated_bptt", "windows": w.state_dict(), "carry": self.objective.carry,
                "states": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position and this rank's carried state saved by :meth:`state_dict`."""
        if state.get("kind") != "truncated_bptt":
            raise LmlabError(f"the checkpoint's data position is of kind {state.get('kind')!r}, not "
                             "truncated_bptt; resume with the trainer that wrote it")
        self.windows.load_state_dict(state["windows"])
        states = state["states"]
        rank = self.windows.rank if len(states) == self.windows.world_size else 0
        self.objective.state = decode_state(states[rank], self.windows.device)


@torch.no_grad()
def stream_nll(
    model: torch.nn.Module,
    tokens: np.ndarray,
    *,
    block_size: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:
    """Return ``(total nats, predicted tokens)`` of a stateful model over ``batch_size`` contiguous
    streams of ``tokens``, carrying the state across windows (each stream from a zero state).

    Every token but the first of each stream and a tail shorter than ``batch_size`` tokens
    is predicted once, with all the stream's earlier text as context. The model is put in
    eval mode and restored afterwards.
    """
    device = torch.device(device)
    stream_len = (len(tokens) - 1) // batch_size
    if stream_len < 1:
        raise LmlabError(f"cannot evaluate {len(tokens)} tokens in {batch_size} streams; "
                         "lower the batch size")
    data = np.asarray(tokens[: batch_size * stream_len + 1], dtype=np.int64)
    starts = np.arange(batch_size) * stream_len
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    try:
        for offset in range(0, stream_len, block_size):
            t = min(block_size, stream_len - offset)
            rows = np.stack([data[s + offset: s + offset + t + 1] for s in starts])
            x = torch.from_numpy(rows).to(device)
            logits, state = model(x[:, :-1], state, return_state=True)
            total += float(token_cross_entropy(logits, x[:, 1:], reduction="sum"))
            count += int(x[:, 1:].numel())
    finally:
        model.train(was_training)
    return total, count
