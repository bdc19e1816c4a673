"""The decode loop shared by every lmlab language model.

:func:`generate_ids` continues token-id prompts (batched, different lengths allowed);
:func:`decode` runs one sampling loop for all models, with a per-model strategy from
:mod:`lmlab.generate.steps` that reads the prompts and appends each new token.
``temperature == 0`` is greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generate.sampling import check_settings, process_logits, select_next
from lmlab.generate.steps import family, fit_model_prompts, steps_for
from lmlab.nn.linear import use_gemv_layout


@torch.inference_mode()
def decode(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
           eos_id: int | Sequence[int] | None = None, stop: Sequence[Sequence[int]] | None = None,
           seed: int | None = None, on_token: Callable[[int, int], bool | None] | None = None,
           use_cache: bool = True, truncate: bool = False) -> list[list[int]]:
    """Continue each id list in ``prompts``; return the new tokens of each row.

    ``model``: a Transformer ``Decoder`` (KV cache; left-padded batch), an ``EncoderDecoder``
    (each prompt is a source; the new tokens are its target, decoded from the start token with
    the self-attention and cross-attention caches), a recurrent
    ``RNNLM`` (rnn/lstm/gru: carries the recurrent state), an ``ELMo`` (its forward LM,
    carrying the LSTM state) or an ``NPLM`` (reads the last ``context`` tokens). A row
    ends after it emits ``eos_id`` (one id or several), after its output ends with one
    of the ``stop`` id sequences (both kept in the output; an encoder-decoder's ``eos_id``
    defaults to its config's), when ``on_token(row, token)``
    returns True, or after ``max_new_tokens``. ``seed`` makes sampling reproducible.
    ``use_cache=False`` recomputes the whole sequence every step (slow; the reference the
    cache and the carried state are tested against). A decoder raises LmlabError when a
    prompt plus ``max_new_tokens`` exceeds ``block_size`` unless ``truncate`` keeps the
    prompt's tail; an encoder-decoder with absolute positions when a source or the target
    exceeds ``block_size`` (``truncate`` keeps a source's head); the other models have no
    context limit. The repetition penalty counts the prompt, or an encoder-decoder's target
    (start token included), as Hugging Face does.
    """
    check_settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    prompts = fit_model_prompts(model, [list(map(int, p)) for p in prompts], max_new_tokens, truncate)
    B = len(prompts)
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    bad = [t for p in prompts for t in p if not 0 <= t < vocab]
    if bad:
        raise LmlabError(f"token id {bad[0]} is outside the model's vocabulary (0..{vocab - 1}); "
                         "use the tokenizer the model was trained with")
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, vocab, dtype=torch.bool, device=device)
        context = ([[model.config.decoder_start_token_id]] * B if family(model) == "encdec" else prompts)
        for r, p in enumerate(context):
            seen[r, torch.tensor(p, device=device)] = True
    generator = None
    if seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    if eos_id is None and family(model) == "encdec":
        eos_id = model.config.eos_token_id  # a target ends at end-of-sequence
    eos = set() if eos_id is None else ({int(eos_id)} if isinstance(eos_id, int) else set(map(int, eos_id)))
    stops = [list(map(int, s)) for s in (stop or []) if len(s)]

    was_training = model.training
    model.eval()
    if not was_training:  # an inference model (a training one keeps its optimizer's layout)
        use_gemv_layout(model)
    try:
        steps = steps_for(model, prompts, max_new_tokens, use_cache, device)
        logits = steps.prefill()
        out: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        plain_greedy = temperature == 0 and repetition_penalty == 1.0
        for step in range(max_new_tokens):
            if not plain_greedy:
                logits = process_logits(logits.float(), seen, temperature, top_k, top_p,
                                        repetition_penalty)
            nxt = select_next(logits, temperature, generator)
            for r, t in enumerate(nxt.tolist()):
                if done[r]:
                    continue
                out[r].append(t)
                if on_token is not None and on_token(r, t):
                    done[r] = True
                elif t in eos or (stops and any(out[r][-len(s):] == s for s in stops)):
                    done[r] = True
            if all(done) or step == max_new_tokens - 1:
                break
            if seen is not None:
                seen.scatter_(1, nxt[:, None], True)
            logits = steps.step(nxt, step)
    finally:
        model.train(was_training)
    return out


def generate_ids(model: nn.Module, ids: Any, max_new_tokens: int, **kwargs: Any) -> Any:
    """Continue ``ids`` with :func:`decode`'s options; return prompt + new tokens in the input's form.

    ``ids``: LongTensor ``(B, T)`` -> LongTensor ``(B, T + n)`` (rows that stopped early are
    filled with ``eos_id``, or without one 0, an encoder-decoder's pad id); ``(T,)`` ->
    ``(T + n,)``; a list of id lists -> a list of id lists. With ``truncate`` the returned
    prompts are the kept tails (only a Transformer decoder has a context limit; other models
    keep the prompts whole). An
    encoder-decoder reads ``ids`` as sources (a tensor's rows unpadded) and returns only the
    new target tokens (``(B, n)``, ``(n,)`` or lists), as its output is not a continuation.
    """
    is_tensor = isinstance(ids, torch.Tensor)
    if is_tensor and ids.dim() not in (1, 2):
        raise LmlabError(f"ids must have shape (T,) or (B, T), got {tuple(ids.shape)}")
    rows = ids.reshape(-1, ids.shape[-1]).tolist() if is_tensor else [list(map(int, r)) for r in ids]
    check_settings(max_new_tokens, kwargs.get("temperature", 1.0), kwargs.get("top_k"), kwargs.get("top_p"),
                    kwargs.get("repetition_penalty", 1.0))
    rows = fit_model_prompts(model, rows, max_new_tokens, bool(kwargs.get("truncate")))
    new = decode(model, rows, max_new_tokens, **kwargs)
    if family(model) == "encdec":
        rows = [[] for _ in rows]  # the output is the target alone
    if not is_tensor:
        return [p + x for p, x in zip(rows, new)]
    eos = kwargs.get("eos_id")
    ends = [] if eos is None else [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
    fill = ends[0] if ends else (model.config.pad_token_id if family(model) == "encdec" else 0)
    n = max(len(x) for x in new)
    full = [p + x + [fill] * (n - len(x)) for p, x in zip(rows, new)]
    result = torch.tensor(full, dtype=torch.long, device=ids.device)
    return result[0] if ids.dim() == 1 else result
