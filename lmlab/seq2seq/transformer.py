"""The Transformer of Vaswani et al. (2017) on the built-in translation tasks, beside RNNsearch.

The model is the lab's :class:`~lmlab.models.encdec.EncoderDecoder` with the ``transformer-tiny``
preset's design (sinusoidal positions, post-LN, ReLU, one embedding shared by source, target and
output, scaled by sqrt(d)), so source and target share one character vocabulary. Decoding is the
lab's generation code (greedy, or beam search with a length penalty); the heat maps show the
cross-attention of the last decoder layer, averaged over its heads.
"""

from __future__ import annotations

import torch

from lmlab.generate import beam_search, decode
from lmlab.models.encdec import EncDecConfig, EncoderDecoder
from lmlab.models.registry import get_preset
from lmlab.seq2seq.tasks import BOS, EOS, PAD, Task, Vocab

MAX_POSITIONS = 256  # sinusoidal positions cost no parameters; enough for any task's longest input


def joint_vocab(task: Task) -> Vocab:
    """Return the one vocabulary of source and target characters the shared embedding needs."""
    return Vocab.from_chars(task.src_chars + task.tgt_chars)


def transformer_config(vocab_size: int, d_model: int, layers: int, heads: int,
                       dropout: float) -> EncDecConfig:
    """Return the Transformer's config for a task: ``layers`` encoder and decoder layers of width
    ``d_model`` with ``heads`` heads and a ``4 d_model`` feed-forward block, the task's special ids."""
    return get_preset("transformer-tiny", vocab_size=vocab_size, block_size=MAX_POSITIONS, n_layer=layers,
                      n_head=heads, d_model=d_model, d_ff=4 * d_model, dropout=dropout, pad_token_id=PAD,
                      eos_token_id=EOS, decoder_start_token_id=BOS)


def _rows(src: torch.Tensor) -> list[list[int]]:
    return [[t for t in row if t != PAD] for row in src.tolist()]


@torch.no_grad()
def cross_attention(model: EncoderDecoder, source: list[int],
                    tokens: list[int]) -> tuple[torch.Tensor, float]:
    """Return the last decoder layer's cross-attention weights ``(len(tokens), len(source))`` (mean over
    heads) while the model reads ``tokens`` after the start token, and their summed log-probability."""
    block = model.decoder.blocks[-1].cross_attn
    seen: dict[str, torch.Tensor] = {}

    def hook(module, args, output):  # args: (x, rope, cache, layer, mask, is_causal, memory)
        seen["x"], seen["memory"] = args[0], args[6]

    handle = block.register_forward_hook(hook)
    try:
        src = torch.tensor([source], device=model.tok_emb.weight.device)
        target = torch.tensor([tokens], device=src.device)
        logits = model(src, torch.cat([torch.full_like(target[:, :1], BOS), target[:, :-1]], dim=1))
    finally:
        handle.remove()
    h, d = block.n_head, block.head_dim
    q = block.q(seen["x"]).view(1, -1, h, d).transpose(1, 2)
    k = block.kv(seen["memory"]).view(1, -1, 2 * h, d).transpose(1, 2)[:, :h]
    scale = block.scale if block.scale is not None else d ** -0.5
    weights = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1).mean(dim=1)[0]
    logp = logits.float().log_softmax(-1)[0, torch.arange(len(tokens)), target[0]]
    return weights.float().cpu(), float(logp.double().sum())


def transformer_decode(model: EncoderDecoder, src: torch.Tensor, beam: int, length_penalty: float,
                       max_len: int, details: bool = False) -> list[tuple[list[int], float, torch.Tensor]]:
    """Decode padded sources ``(B, S)``: greedy (``beam=1``) or beam search; return per source its
    tokens (ending in ``</s>`` when finished), and with ``details`` their summed log-probability and
    cross-attention ``(T, S)`` (else NaN and an empty tensor)."""
    sources = _rows(src)
    if beam == 1:
        outputs = decode(model, sources, max_len, temperature=0, eos_id=EOS)
    else:
        outputs = [b[0].tokens for b in beam_search(model, sources, max_len, num_beams=beam,
                                                    length_penalty=length_penalty, eos_id=EOS)]
    results = []
    for source, tokens in zip(sources, outputs):
        if details and tokens:
            weights, score = cross_attention(model, source, tokens)
        else:
            weights, score = torch.zeros(len(tokens), len(source)), float("nan")
        results.append((tokens, score, weights))
    return results
