"""Beam search for every lmlab model that generates: decoders, encoder-decoders and the classic LMs.

The search follows Hugging Face transformers' (``GenerationMixin._beam_search``) step for step,
so the two agree token for token. Per prompt it keeps ``num_beams`` running hypotheses and up to
``num_beams`` finished ones. Each step scores every continuation of every running hypothesis by
its summed log-probability and takes the best ``2 * num_beams`` (more with several end ids). Those
that emit an end id, among the best ``num_beams`` of them, are finished with the score
``sum log p / length ** length_penalty`` (length = new tokens, the end id included) and
compete with the finished hypotheses so far; the best ``num_beams`` that did not end run on (the
model's caches are reordered to follow them: :meth:`lmlab.nn.attention.KVCache.reorder`). At the
last step every candidate counts as finished.

``early_stopping``: ``True`` stops a prompt as soon as it has ``num_beams`` finished hypotheses;
``False`` (Hugging Face's default) when the best running hypothesis, scored at its current length,
cannot beat the worst finished one; ``"never"`` scores it at the longest possible length when
``length_penalty > 0`` (the exact test). A ``length_penalty`` above 0 favours longer outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generate.steps import family, fit_model_prompts, steps_for
from lmlab.nn.linear import use_gemv_layout

_NEG = -1.0e9  # the score of an excluded hypothesis (float32, as in transformers)


@dataclass
class Beam:
    """A finished hypothesis: its new token ids (the end id included when it ended) and its score
    (summed log-probability / length ** length_penalty)."""

    tokens: list[int]
    score: float


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Select along dim 1 of ``t (B, N, ...)`` the ``index (B, M)`` entries of each row."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def check_beam_settings(num_beams: int, length_penalty: float, early_stopping: bool | str,
                        num_return_sequences: int = 1) -> None:
    """Raise LmlabError for beam settings that make no sense."""
    if num_beams < 1:
        raise LmlabError(f"num_beams={num_beams} must be at least 1")
    if early_stopping not in (True, False, "never"):
        raise LmlabError(f"early_stopping={early_stopping!r} must be true, false or never")
    if not 1 <= num_return_sequences <= num_beams:
        raise LmlabError(f"num_return_sequences={num_return_sequences} must be between 1 and "
                         f"num_beams={num_beams}")
    if length_penalty != length_penalty:  # NaN
        raise LmlabError("length_penalty must be a number")


@torch.inference_mode()
def beam_search(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, num_beams: int = 4,
                length_penalty: float = 1.0, early_stopping: bool | str = False,
                eos_id: int | Sequence[int] | None = None, num_return_sequences: int = 1,
                use_cache: bool = True, truncate: bool = False) -> list[list[Beam]]:
    """Beam-search each id list in ``prompts``; return, per prompt, its best ``num_return_sequences``
    :class:`Beam` s, best first (see the module docstring for the rules).

    ``model`` and ``prompts`` as :func:`lmlab.generate.decode`: a decoder continues its prompts,
    an encoder-decoder reads them as sources (its encoder runs once per source; ``eos_id``
    defaults to its config's). ``max_new_tokens`` bounds every hypothesis.
    """
    check_beam_settings(num_beams, length_penalty, early_stopping, num_return_sequences)
    if max_new_tokens < 1:
        raise LmlabError(f"max_new_tokens={max_new_tokens} must be at least 1 for beam search")
    prompts = fit_model_prompts(model, [list(map(int, p)) for p in prompts], max_new_tokens, truncate)
    if eos_id is None and family(model) == "encdec":
        eos_id = model.config.eos_token_id
    eos_ids = ([] if eos_id is None else [int(eos_id)] if isinstance(eos_id, int)
               else sorted(set(map(int, eos_id))))
    device = next(model.parameters()).device
    B, k = len(prompts), num_beams
    vocab = model.config.vocab_size
    bad = [t for p in prompts for t in p if not 0 <= t < vocab]
    if bad:
        raise LmlabError(f"token id {bad[0]} is outside the model's vocabulary (0..{vocab - 1}); "
                         "use the tokenizer the model was trained with")
    K = max(2, 1 + len(eos_ids)) * k  # candidates kept per step: enough to continue k beams
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    in_top_k = (torch.arange(K, device=device) < k)[None, :]
    offsets = (torch.arange(B, device=device) * k)[:, None]

    running_tokens = torch.zeros(B, k, max_new_tokens, dtype=torch.long, device=device)
    running_scores = torch.zeros(B, k, dtype=torch.float32, device=device)
    running_scores[:, 1:] = _NEG  # the k copies of a prompt are one hypothesis: expand only the first
    done_tokens = running_tokens.clone()
    done_scores = torch.full((B, k), _NEG, dtype=torch.float32, device=device)
    done_lengths = torch.zeros(B, k, dtype=torch.long, device=device)
    is_done = torch.zeros(B, k, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)

    was_training = model.training
    model.eval()
    if not was_training:  # as decode(): one-row products read column-major weights faster
        use_gemv_layout(model)
    try:
        steps = steps_for(model, prompts, max_new_tokens, use_cache, device, expand=k)
        logits = steps.prefill()
        for step in range(max_new_tokens):
            logp = torch.log_softmax(logits.float(), dim=-1).view(B, k, -1)
            V = logp.shape[-1]
            cand = (logp + running_scores[:, :, None]).reshape(B, k * V)
            top_scores, top_index = torch.topk(cand, K)
            origin, token = top_index // V, top_index % V
            cand_tokens = _gather(running_tokens, origin)
            cand_tokens[:, :, step] = token
            ends = torch.isin(token, eos) | (step == max_new_tokens - 1)

            # the best k candidates that did not end run on
            live_scores = top_scores + ends.to(torch.float32) * _NEG
            keep = torch.topk(live_scores, k)[1]
            running_tokens, running_scores = _gather(cand_tokens, keep), _gather(live_scores, keep)
            parents = _gather(origin, keep)

            # candidates that ended among the best k join the finished ones if they rank
            new_done = ends & in_top_k
            scores = top_scores / ((step + 1) ** length_penalty)
            full = torch.all(is_done, dim=-1, keepdim=True) & (early_stopping is True)
            scores += full.to(torch.float32) * _NEG
            scores += (~improvable).to(torch.float32) * _NEG
            scores += (~new_done).to(torch.float32) * _NEG
            merged = torch.cat([done_scores, scores], dim=1)
            best = torch.topk(merged, k)[1]
            done_tokens = _gather(torch.cat([done_tokens, cand_tokens], dim=1), best)
            done_scores = _gather(merged, best)
            lengths = torch.full_like(top_index, step + 1)
            done_lengths = _gather(torch.cat([done_lengths, lengths], dim=1), best)
            is_done = _gather(torch.cat([is_done, new_done], dim=1), best)

            # can a running hypothesis still beat the worst finished one?
            generated = step + 1
            if early_stopping == "never" and length_penalty > 0.0:
                generated = max_new_tokens
            best_running = running_scores[:, :1] / (generated ** length_penalty)
            worst_done = torch.where(is_done, torch.min(done_scores, dim=1, keepdim=True)[0], _NEG)
            improvable = improvable & torch.any(best_running > worst_done, dim=-1, keepdim=True)
            all_closed = bool(torch.all(is_done)) and early_stopping is True
            if not bool(improvable.any()) or all_closed or bool(ends.all()):
                break
            steps.reorder((parents + offsets).reshape(-1))
            logits = steps.step(running_tokens[:, :, step].reshape(-1), step)
    finally:
        model.train(was_training)
    tokens, scores, lengths = done_tokens.tolist(), done_scores.tolist(), done_lengths.tolist()
    return [[Beam(tokens[b][j][:lengths[b][j]], scores[b][j]) for j in range(num_return_sequences)]
            for b in range(B)]
