"""Infini-attention (Munkhdalai et al. 2024): local causal attention within a segment plus a
compressive memory of all earlier segments, so a model reads input of any length with constant memory.

The input is cut into segments of ``segment_len`` (N) tokens. Within a segment each query attends
causally to the segment's keys (softmax, RoPE). Across segments each KV head keeps a memory
``M (d_k x d_v)`` and a normaliser ``z (d_k)``, always in fp32 (they overflow in bf16). A query
first reads the memory of the earlier segments with ``sigma(q) = ELU(q) + 1``::

    A_mem = sigma(Q) M / (sigma(Q) z)        (0 while the memory is empty: M = 0 and z = 0)

and after the segment is complete its keys and values are written (linear or delta rule)::

    linear: M += sigma(K)^T V
    delta:  M += sigma(K)^T (V - sigma(K) M / (sigma(K) z))
    z += sum_t sigma(K_t)

A learned gate per query head mixes the two: ``sigmoid(beta) A_mem + (1 - sigmoid(beta)) A_local``.
The memory's queries and keys get no RoPE.

``memory_scale`` (not in the paper) multiplies the memory's queries and keys by a learned
``exp(tau)`` per KV head (``tau`` starts at 0, on the gate's learning rate) before the feature
map: as the scale grows, ``ELU(s x) + 1`` tends to a sparse map (``exp(s x) -> 0`` for negative
coordinates), so a query can weigh a few stored keys far above the rest. Without it the read-out
is a weakly selective average of everything stored, which the filler of long inputs swamps.

Positions: RoPE positions restart at 0 in every segment (a token's position is its index within
its segment), so the rotary table needs only N rows and any input length works; order across
segments is carried by the memory alone, as in the paper.

:class:`InfiniState` holds, per layer, ``M``, ``z`` and the current (incomplete) segment's keys
and values: token-by-token generation appends to the segment and folds it into the memory when it
is full. Its size does not depend on how many tokens were read. :func:`run_segments` runs the
decoder's blocks over any input: the rest of the current segment first, then everything from the
boundary on, where each layer handles all the segments in one call (local attention with the
segments side by side in the batch; the memory recursion segment by segment, each segment reading
the memory of the ones before it), which gives the same outputs as running the layers segment by
segment at the cost of one pass. Streaming the input a segment at a time (the decoder's
``last_only``) keeps activations to one segment.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError
from lmlab.nn.attention import causal_mask
from lmlab.nn.linear import Linear
from lmlab.nn.positions import RotaryEmbedding, apply_rope

MEMORY_RULES = ("linear", "delta")
GATE_LR = 1e-2  # beta's own learning rate: under the model's lr the gate stays near 0.5 (REFERENCE.md)


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """Return ``sigma(x) = ELU(x) + 1`` in fp32 (positive, so the memory's normaliser is too)."""
    return F.elu(x.float()) + 1.0


def memory_read(sigma_q: torch.Tensor, M: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Return ``sigma_q M / (sigma_q z)`` for ``sigma_q (..., T, d_k)``, ``M (..., d_k, d_v)``,
    ``z (..., d_k)``: ``(..., T, d_v)`` in fp32. Where the normaliser is 0 (empty memory: M and z
    are 0, so the numerator is too) the read-out is exactly 0."""
    num = sigma_q @ M
    den = sigma_q @ z.unsqueeze(-1)
    return num / torch.where(den > 0, den, torch.ones_like(den))


def memory_update(M: torch.Tensor, z: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the memory ``(M, z)`` after writing one segment's keys ``k (..., N, d_k)`` and values
    ``v (..., N, d_v)`` with the ``linear`` or ``delta`` rule (fp32; the inputs are not modified)."""
    sk = feature_map(k)
    v = v.float()
    if rule == "delta":
        v = v - memory_read(sk, M, z)
    return M + sk.transpose(-1, -2) @ v, z + sk.sum(-2)


class InfiniState:
    """The state of an Infini-attention decoder: per layer the memory ``M (B, H_kv, d, d)`` and
    ``z (B, H_kv, d)`` (fp32), and the current segment's keys (raw for the memory, rotated for
    the local attention) and values ``(B, H_kv, N, d)``, preallocated.

    It follows the decoder cache protocol: ``length`` counts the positions read (the decoder
    advances it), ``max_len`` is unbounded (``sys.maxsize``: the state never grows), ``nbytes``
    is constant, ``reset()`` and ``reorder(index)``. ``fill[r]`` is the number of tokens of row
    ``r`` in its current segment; ``segments`` counts the segments written (for truncated BPTT).
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_heads: int, head_dim: int, segment_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.segment_len = segment_len
        shape = (batch_size, n_kv_heads, head_dim)
        self.M = [torch.zeros(*shape, head_dim, dtype=torch.float32, device=device) for _ in range(n_layer)]
        self.z = [torch.zeros(shape, dtype=torch.float32, device=device) for _ in range(n_layer)]
        seg = (n_layer, batch_size, n_kv_heads, segment_len, head_dim)
        self.k_raw = torch.zeros(seg, dtype=dtype, device=device)
        self.k_rot = torch.zeros(seg, dtype=dtype, device=device)
        self.v = torch.zeros(seg, dtype=dtype, device=device)
        self.fill = [0] * batch_size
        self.segments = 0
        self.length = 0
        self.bptt_segments: int | None = None  # set by run_segments: detach M, z after every that many

    @property
    def max_len(self) -> int:
        """Positions the state can read: unbounded (its size does not depend on the length)."""
        return sys.maxsize

    @property
    def nbytes(self) -> int:
        """Bytes the state holds: memories, normalisers and one segment's keys and values."""
        return (sum(t.nbytes for t in self.M) + sum(t.nbytes for t in self.z)
                + self.k_raw.nbytes + self.k_rot.nbytes + self.v.nbytes)

    def reset(self) -> None:
        """Forget everything read (the buffers are reused)."""
        self.M = [torch.zeros_like(m) for m in self.M]
        self.z = [torch.zeros_like(z) for z in self.z]
        self.fill = [0] * len(self.fill)
        self.segments = self.length = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search: each beam continues one of the previous beams)."""
        self.M = [m.index_select(0, index) for m in self.M]
        self.z = [z.index_select(0, index) for z in self.z]
        for buf in (self.k_raw, self.k_rot, self.v):
            buf.copy_(buf.index_select(1, index))
        self.fill = [self.fill[i] for i in index.tolist()]

    def detach(self) -> None:
        """Cut the gradient through the memory (truncated BPTT): later segments still read it."""
        self.M = [m.detach() for m in self.M]
        self.z = [z.detach() for z in self.z]

    def rows(self, r: int) -> InfiniState:
        """Return a copy of row ``r``'s state (a batch of one)."""
        sub = InfiniState.__new__(InfiniState)
        sub.segment_len, sub.segments, sub.length = self.segment_len, self.segments, self.length
        sub.bptt_segments = self.bptt_segments
        sub.M = [m[r:r + 1].clone() for m in self.M]
        sub.z = [z[r:r + 1].clone() for z in self.z]
        sub.k_raw, sub.k_rot, sub.v = (b[:, r:r + 1].clone() for b in (self.k_raw, self.k_rot, self.v))
        sub.fill = [self.fill[r]]
        return sub

    def put_row(self, r: int, sub: InfiniState) -> None:
        """Write a one-row state from :meth:`rows` back as row ``r``."""
        self.M = [torch.cat([m[:r], s, m[r + 1:]]) for m, s in zip(self.M, sub.M)]
        self.z = [torch.cat([z[:r], s, z[r + 1:]]) for z, s in zip(self.z, sub.z)]
        for buf, s in zip((self.k_raw, self.k_rot, self.v), (sub.k_raw, sub.k_rot, sub.v)):
            buf[:, r:r + 1].copy_(s)
        self.fill[r] = sub.fill[0]


class InfiniAttention(nn.Module):
    """Infini-attention (see the module docstring), called as :class:`~lmlab.nn.attention.Attention`
    is: ``(x, rope, cache, layer, mask, is_causal)``.

    With an :class:`InfiniState` (the decoder always passes one) ``x`` is a piece of one segment
    that continues the ``fill`` tokens already in it (equal for all rows) and ``rope`` holds the
    within-segment positions ``fill..fill+T-1``; when the piece completes the segment, the segment
    is written into the memory. Without one, ``x`` is a whole sequence: the module cuts it into
    segments itself, with a fresh memory, and RoPE if ``rope`` (a :class:`RotaryEmbedding`) is set.
    ``mask`` and ``is_causal`` are not used (local attention is always causal).
    """

    def __init__(self, d_model: int, n_head: int, n_kv_heads: int, head_dim: int, segment_len: int,
                 memory_rule: str = "linear", bias: bool = False, dropout: float = 0.0,
                 gate_lr: float = GATE_LR, memory_scale: bool = False):
        super().__init__()
        if n_head % n_kv_heads:
            raise ValueError(f"n_head={n_head} is not a multiple of n_kv_heads={n_kv_heads}")
        if memory_rule not in MEMORY_RULES:
            raise LmlabError(f"memory_rule={memory_rule!r} is not one of {', '.join(MEMORY_RULES)}")
        self.n_head, self.n_kv_heads, self.head_dim = n_head, n_kv_heads, head_dim
        self.segment_len, self.memory_rule, self.dropout = segment_len, memory_rule, dropout
        self.qkv = Linear(d_model, (n_head + 2 * n_kv_heads) * head_dim, bias=bias)
        self.proj = Linear(n_head * head_dim, d_model, bias=bias)
        # the gate: sigmoid(0) = 0.5 mixes memory and local attention equally at the start
        self.beta = nn.Parameter(torch.zeros(n_head))
        self.beta.lmlab_optim = {"lr": gate_lr, "weight_decay": 0.0}
        self.log_scale: nn.Parameter | None = None
        if memory_scale:
            self.log_scale = nn.Parameter(torch.zeros(n_kv_heads))
            self.log_scale.lmlab_optim = {"lr": gate_lr, "weight_decay": 0.0}

    def gate(self) -> torch.Tensor:
        """Return ``sigmoid(beta)`` per head ``(n_head,)``: the memory's share of each head's output."""
        return torch.sigmoid(self.beta.float())

    def forward(self, x: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | RotaryEmbedding | None = None,
                cache: InfiniState | None = None, layer: int = 0, mask: torch.Tensor | None = None,
                is_causal: bool = True) -> torch.Tensor:
        """Attend ``x (B, T, d_model)``; return ``(B, T, d_model)`` (see the class docstring)."""
        if cache is None:
            return self._sequence(x, rope)
        return self._piece(x, rope, cache, layer)

    def _sequence(self, x: torch.Tensor, rope: RotaryEmbedding | None) -> torch.Tensor:
        """A whole sequence through one layer with a fresh memory."""
        B, T, _ = x.shape
        state = InfiniState(1, B, self.n_kv_heads, self.head_dim, self.segment_len, x.dtype, x.device)
        return self._piece(x, segment_rope(rope, 0, T, self.segment_len), state, 0)

    def _piece(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, state: InfiniState,
               layer: int) -> torch.Tensor:
        """Attend ``x``: a piece within the current segment after ``fill > 0`` tokens, or from a segment
        boundary any number of segments (layer by layer: each segment reads the memory of the earlier
        ones, so one call does them all)."""
        B, T, _ = x.shape
        nh, nkv, hd, N = self.n_head, self.n_kv_heads, self.head_dim, self.segment_len
        fill = state.fill[0]
        if fill and fill + T > N:
            raise ValueError(f"a piece of {T} tokens after {fill} overruns the segment of {N}")
        q, k, v = self.qkv(x).view(B, T, nh + 2 * nkv, hd).split([nh, nkv, nkv], dim=2)
        qr, kr = (apply_rope(q, *rope), apply_rope(k, *rope)) if rope is not None else (q, k)
        q, k, v, qr, kr = (t.transpose(1, 2) for t in (q, k, v, qr, kr))  # (B, heads, T, D)
        dropout = self.dropout if self.training else 0.0
        if fill:
            n_seg, seg_len = 1, T
            keys = torch.cat([state.k_rot[layer, :, :, :fill], kr], dim=2)
            values = torch.cat([state.v[layer, :, :, :fill], v], dim=2)
            raw = torch.cat([state.k_raw[layer, :, :, :fill], k], dim=2)
            attn_mask = None if T == 1 else causal_mask(T, fill + T, x.device)
            a_local = F.scaled_dot_product_attention(qr, keys, values, attn_mask=attn_mask, dropout_p=dropout,
                                                     enable_gqa=nh > nkv)
            complete = [(raw, values)] if fill + T == N else []
        else:  # segments side by side in the batch for the local attention
            n_seg = -(-T // N)
            seg_len = N if n_seg > 1 else T
            a_local = F.scaled_dot_product_attention(
                _segments(qr, n_seg, seg_len), _segments(kr, n_seg, seg_len), _segments(v, n_seg, seg_len),
                dropout_p=dropout, is_causal=seg_len > 1, enable_gqa=nh > nkv)
            a_local = _unsegment(a_local, B, n_seg, T)
            complete = [(k[:, :, j * N:(j + 1) * N], v[:, :, j * N:(j + 1) * N]) for j in range(T // N)]
        scale = None if self.log_scale is None else self.log_scale.float().exp().view(1, nkv, 1, 1)
        with torch.autocast(x.device.type, enabled=False):  # memory math in fp32 under bf16 autocast
            # the memory before each segment, then after the last complete one
            M, z = state.M[layer], state.z[layer]
            before = [(M, z)]
            for j, (kj, vj) in enumerate(complete):
                M, z = memory_update(M, z, kj if scale is None else kj.float() * scale, vj, self.memory_rule)
                if state.bptt_segments is not None and (state.segments + j + 1) % state.bptt_segments == 0:
                    M, z = M.detach(), z.detach()
                before.append((M, z))
            state.M[layer], state.z[layer] = M, z
            # read-out: queries without RoPE, grouped per KV head (query head h reads KV head h // G)
            G = nh // nkv
            qs = q if scale is None else q.float() * scale.repeat_interleave(G, dim=1)
            sq = _segments(feature_map(qs), n_seg, seg_len).reshape(B, n_seg, nkv, G, seg_len, hd)
            sq = sq.permute(0, 2, 1, 3, 4, 5).reshape(B, nkv, n_seg, G * seg_len, hd)
            Ms = torch.stack([m for m, _ in before[:n_seg]], dim=2)
            zs = torch.stack([zz for _, zz in before[:n_seg]], dim=2)
            a_mem = memory_read(sq, Ms, zs).view(B, nkv, n_seg, G, seg_len, hd).permute(0, 2, 1, 3, 4, 5)
            a_mem = _unsegment(a_mem.reshape(B * n_seg, nh, seg_len, hd), B, n_seg, T)
        g = self.gate().view(1, nh, 1, 1)
        y = (g * a_mem + (1 - g) * a_local.float()).to(a_local.dtype)
        # an incomplete last segment waits in the buffers
        start, rest = (fill, slice(0, T)) if fill else (0, slice(T - T % N, T))
        n = rest.stop - rest.start
        if n and start + n < N:
            state.k_raw[layer, :, :, start:start + n] = k[:, :, rest].detach()
            state.k_rot[layer, :, :, start:start + n] = kr[:, :, rest].detach()
            state.v[layer, :, :, start:start + n] = v[:, :, rest].detach()
        return self.proj(y.transpose(1, 2).reshape(B, T, nh * hd))


def _segments(t: torch.Tensor, n_seg: int, seg_len: int) -> torch.Tensor:
    """``(B, H, T, D)`` -> ``(B * n_seg, H, seg_len, D)``: the segments side by side in the batch (the
    last one padded with zeros, which causal attention never lets a real query see)."""
    B, H, T, D = t.shape
    if n_seg == 1:
        return t
    t = F.pad(t, (0, 0, 0, n_seg * seg_len - T))
    return t.view(B, H, n_seg, seg_len, D).transpose(1, 2).reshape(B * n_seg, H, seg_len, D)


def _unsegment(t: torch.Tensor, B: int, n_seg: int, T: int) -> torch.Tensor:
    """Inverse of :func:`_segments`: ``(B * n_seg, H, seg_len, D)`` -> ``(B, H, T, D)``."""
    if n_seg == 1:
        return t
    _, H, seg_len, D = t.shape
    return t.view(B, n_seg, H, seg_len, D).transpose(1, 2).reshape(B, H, n_seg * seg_len, D)[:, :, :T]


def segment_rope(rope: RotaryEmbedding | None, fill: int, T: int, segment_len: int
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return RoPE's ``(cos, sin)`` for ``T`` tokens after ``fill`` tokens of the current segment:
    positions count within each segment (restarting at 0)."""
    if rope is None:
        return None
    if fill + T <= segment_len:
        return rope(fill, T)
    cos, sin = rope(0, 0, (torch.arange(fill, fill + T, device=rope.cos.device) % segment_len)[None])
    return cos[0], sin[0]


Block = Callable[..., torch.Tensor]


def run_segments(blocks: Sequence[Block], x: torch.Tensor, state: InfiniState, rope: RotaryEmbedding | None,
                 bptt_segments: int | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``x (B, T, d)`` through ``blocks`` carrying ``state``; return the output ``(B, T, d)``.

    The rest of the current segment runs first through every block, then everything from the
    boundary on (each layer reads and writes its memory segment by segment).
    ``bptt_segments``: detach the memory after every that many segments written (truncated BPTT;
    None: never). ``valid (B, T)`` bool: False marks padding, which is skipped (each row then reads
    only its own tokens); rows that are padded, or whose current segments differ in fill, run one at
    a time (their outputs at padding are 0).
    """
    B, T, _ = x.shape
    if T == 0:
        return x
    if valid is not None and bool(valid.all()):
        valid = None
    if B > 1 and (valid is not None or len(set(state.fill)) > 1):
        out = torch.zeros_like(x)
        for r in range(B):
            keep = valid[r] if valid is not None else torch.ones(T, dtype=torch.bool, device=x.device)
            sub = state.rows(r)
            out[r, keep] = run_segments(blocks, x[r:r + 1, keep], sub, rope, bptt_segments)[0]
            state.put_row(r, sub)
        return out
    if valid is not None:  # one row with padding
        out = torch.zeros_like(x)
        out[:, valid[0]] = run_segments(blocks, x[:, valid[0]], state, rope, bptt_segments)
        return out
    N = state.segment_len
    state.bptt_segments = bptt_segments
    fill = state.fill[0]
    cut = min(T, N - fill) if fill else 0
    outs = []
    for a, b in ((0, cut), (cut, T)):
        if a == b:
            continue
        h = x[:, a:b]
        piece_rope = segment_rope(rope, fill, b - a, N)
        for i, block in enumerate(blocks):
            h = block(h, piece_rope, state, i, None, True)
        outs.append(h)
        state.segments += (fill + b - a) // N
        fill = (fill + b - a) % N
        state.fill = [fill] * len(state.fill)
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
