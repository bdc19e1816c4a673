"""Training batches from a prepared token memmap: random windows, reproducible and resumable.

Every micro-step draws the offsets of one *global* micro-batch (``world_size *
batch_size`` windows) from a seeded numpy generator; rank ``r`` keeps rows
``r::world_size``. All ranks therefore draw the same numbers, so a run on N
processes sees exactly the windows a single process with an N-times larger batch
sees, and the generator state (part of the checkpoint) is the whole data position.

On example data (``example_len``: the tokens are back-to-back examples of that many tokens,
e.g. passkey retrieval) a window is one whole example: the starts are drawn among the example
boundaries, and a loss mask (0 = context only) turns the labels it excludes into -100.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.nn.losses import IGNORE_INDEX


class RandomWindows:
    """Random ``block_size + 1`` token windows from ``tokens`` as ``input_ids``/``labels`` batches.

    ``tokens`` is a 1-D integer array (usually a ``np.memmap`` of train.bin). Each
    call to :meth:`next` returns ``{"input_ids": (B, T) int64, "labels": (B, T) int64}``
    on ``device``, with labels the inputs shifted by one token. With ``example_len`` the
    windows are whole examples (``block_size`` must be ``example_len - 1``); with ``loss_mask``
    (one value per token) the labels of tokens whose mask is 0 are -100 (not scored).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        block_size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        split: str = "train",
        example_len: int | None = None,
        loss_mask: np.ndarray | None = None,
    ):
        if block_size < 1 or batch_size < 1:
            raise LmlabError("--block-size and --batch-size must be at least 1")
        if example_len is not None and block_size != example_len - 1:
            raise LmlabError(f"the data holds examples of {example_len} tokens, one per window; "
                             f"train with --block-size {example_len - 1} (got {block_size})")
        if loss_mask is not None and len(loss_mask) != len(tokens):
            raise LmlabError(f"the {split} loss mask has {len(loss_mask)} values for {len(tokens)} tokens; "
                             "prepare the data again")
        if len(tokens) < block_size + 1:
            raise LmlabError(
                f"the {split} split has {len(tokens)} tokens, fewer than block size + 1 = "
                f"{block_size + 1}; lower --block-size or prepare more data"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.example_len = example_len
        self.loss_mask = loss_mask
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.batches_drawn = 0

    @property
    def tokens_per_batch(self) -> int:
        """Tokens this rank sees per batch (batch_size * block_size)."""
        return self.batch_size * self.block_size

    def next_offsets(self) -> np.ndarray:
        """Draw the next global micro-batch of window starts and return this rank's rows."""
        n = self.batch_size * self.world_size
        if self.example_len is not None:
            offsets = self.rng.integers(0, len(self.tokens) // self.example_len, size=n) * self.example_len
        else:
            high = len(self.tokens) - self.block_size  # exclusive: a window needs block_size + 1 tokens
            offsets = self.rng.integers(0, high, size=n)
        self.batches_drawn += 1
        return offsets[self.rank :: self.world_size]

    def next(self) -> dict[str, torch.Tensor]:
        """Return the next batch as int64 tensors on the device."""
        offsets = self.next_offsets()
        t = self.block_size
        rows = np.stack([np.asarray(self.tokens[o : o + t + 1], dtype=np.int64) for o in offsets])
        labels = rows[:, 1:].copy()
        if self.loss_mask is not None:
            keep = np.stack([np.asarray(self.loss_mask[o + 1 : o + t + 1]) for o in offsets])
            labels[keep == 0] = IGNORE_INDEX
        batch = {"input_ids": np.ascontiguousarray(rows[:, :-1]), "labels": labels}
        return {k: self._to_device(torch.from_numpy(v)) for k, v in batch.items()}

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        """Return the data position: the generator state, seed and the number of batches drawn."""
        return {
            "kind": "random_windows",
            "seed": self.seed,
            "batches_drawn": self.batches_drawn,
            "rng": self.rng.bit_generator.state,
            "block_size": self.block_size,
            "global_batch": self.batch_size * self.world_size,
            "example_len": self.example_len,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the data position saved by :meth:`state_dict`.

        Raises LmlabError when the saved block size or global micro-batch differs, since
        the data order would then silently change.
        """
        if state.get("kind") != "random_windows":
            raise LmlabError(
                f"the checkpoint's data position is of kind {state.get('kind')!r}, "
                "not random_windows; resume with the trainer that wrote it"
            )
        mine = (self.block_size, self.batch_size * self.world_size)
        saved = (state["block_size"], state["global_batch"])
        if mine != saved:
            raise LmlabError(
                f"the checkpoint was written with block size {saved[0]} and global micro-batch "
                f"{saved[1]} (world size x batch size), this run has {mine[0]} and {mine[1]}; "
                "resume with the same --block-size and global batch"
            )
        if state.get("example_len") != self.example_len:
            raise LmlabError("the checkpoint was written on data of other examples (example length "
                             f"{state.get('example_len')}, this data: {self.example_len}); "
                             "resume on the same data")
        self.seed = state["seed"]
        self.batches_drawn = state["batches_drawn"]
        self.rng.bit_generator.state = state["rng"]


def eval_offsets(n_tokens: int, block_size: int, n_windows: int | None = None,
                 stride: int | None = None) -> np.ndarray:
    """Return starts of the evaluation windows of ``block_size`` predictions over ``n_tokens`` tokens.

    Window i predicts tokens ``start+1 .. start+block_size``. Without ``stride`` (or with
    ``stride == block_size``) the windows do not overlap: consecutive ones share a
    boundary token, so every token after the first is predicted once. With a smaller
    ``stride`` they slide by ``stride`` tokens and every window after the first is meant
    to score only its last ``stride`` predictions (each then has at least ``block_size -
    stride`` tokens of context); the starts are placed so that those cover every token
    after the first once. With ``n_windows`` set, that many full windows are spread
    evenly over the split (a fixed, deterministic subset for periodic validation). The
    last window may be shorter.
    """
    stride = block_size if stride is None else stride
    if not 0 < stride <= block_size:
        raise LmlabError(f"the evaluation stride must be between 1 and the block size {block_size}, "
                         f"not {stride}")
    rest = np.arange(stride, max(n_tokens - 1 - block_size + stride, stride), stride, dtype=np.int64)
    starts = np.concatenate([np.zeros(1 if n_tokens > 1 else 0, dtype=np.int64), rest])
    if n_windows is not None and n_windows < len(starts):
        full = starts[starts + block_size + 1 <= n_tokens]
        pick = np.linspace(0, len(full) - 1, num=n_windows).round().astype(np.int64)
        starts = full[np.unique(pick)]
    return starts
