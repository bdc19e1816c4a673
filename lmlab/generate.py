"""Text generation: sampling rules and the KV-cache decode loop.

:func:`generate_ids` continues token-id prompts (batched, different lengths allowed);
:func:`generate_text` does the same for strings with a tokenizer, string stop sequences
and streaming. Sampling applies, in Hugging Face's order: repetition penalty,
temperature, top-k, top-p; ``temperature == 0`` is greedy decoding.

Batched prompts are left-padded: padding gets no attention and real tokens keep the
position ids they would have alone, so every row decodes as if it ran by itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lmlab.config import arg
from lmlab.errors import LmlabError


def process_logits(logits: torch.Tensor, seen: torch.Tensor | None = None, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None,
                   repetition_penalty: float = 1.0) -> torch.Tensor:
    """Return ``logits (B, V)`` after the repetition penalty, temperature, top-k and top-p rules.

    ``seen (B, V)`` bool marks tokens already in each row (prompt and output): their
    logits are divided by ``repetition_penalty`` when positive, multiplied when negative
    (Keskar et al. 2019). Removed tokens get ``-inf``. Temperature 0 leaves the scale alone
    (the caller takes the argmax).
    """
    if repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= 1 - top_p
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def select_next(logits: torch.Tensor, temperature: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Return the next token per row ``(B,)``: argmax when ``temperature == 0``, else a sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_settings(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                    repetition_penalty: float) -> None:
    if max_new_tokens < 0:
        raise LmlabError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise LmlabError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise LmlabError(f"top_k={top_k} must be >= 1 (or unset to disable)")
    if top_p is not None and not 0 < top_p <= 1:
        raise LmlabError(f"top_p={top_p} must be in (0, 1] (1 disables it)")
    if repetition_penalty <= 0:
        raise LmlabError(f"repetition_penalty={repetition_penalty} must be > 0 (1 disables it)")


def _fit_prompts(prompts: list[list[int]], max_new_tokens: int, block_size: int,
                 truncate: bool) -> list[list[int]]:
    """Check prompt + new tokens fit the context; with ``truncate`` keep each prompt's tail."""
    if not prompts:
        raise LmlabError("no prompts given; pass at least one prompt")
    for p in prompts:
        if not p:
            raise LmlabError("a prompt is empty; give at least one token (e.g. the end-of-text id)")
    room = block_size - max_new_tokens
    longest = max(len(p) for p in prompts)
    if longest <= room:
        return prompts
    if truncate and room >= 1:
        return [p[-room:] for p in prompts]
    raise LmlabError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                     f"block_size {block_size}; shorten the prompt, lower max_new_tokens, or set truncate "
                     "(--truncate) to keep the prompt's last block_size - max_new_tokens tokens")


@torch.inference_mode()
def decode(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
           eos_id: int | Sequence[int] | None = None, stop: Sequence[Sequence[int]] | None = None,
           seed: int | None = None, on_token: Callable[[int, int], bool | None] | None = None,
           use_cache: bool = True, truncate: bool = False) -> list[list[int]]:
    """Continue each id list in ``prompts``; return the new tokens of each row.

    A row ends after it emits ``eos_id`` (one id or several), after its output ends with
    one of the ``stop`` id sequences (both kept in the output), when ``on_token(row,
    token)`` returns True, or after ``max_new_tokens``. ``seed`` makes sampling
    reproducible. ``use_cache=False`` recomputes the whole sequence every step (slow;
    the reference the cache is tested against). Raises LmlabError when a prompt plus
    ``max_new_tokens`` exceeds ``block_size`` unless ``truncate`` keeps the prompt's tail.
    """
    _check_settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    prompts = _fit_prompts([list(map(int, p)) for p in prompts], max_new_tokens,
                           model.config.block_size, truncate)
    B, lens = len(prompts), [len(p) for p in prompts]
    T0 = max(lens)
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    device = model.tok_emb.weight.device
    vocab = model.config.vocab_size
    bad = [t for p in prompts for t in p if not 0 <= t < vocab]
    if bad:
        raise LmlabError(f"token id {bad[0]} is outside the model's vocabulary (0..{vocab - 1}); "
                         "use the tokenizer the model was trained with")
    ids = torch.zeros(B, T0, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T0 - len(p):] = torch.tensor(p)
    ids = ids.to(device)
    padded = min(lens) != T0
    valid = prompt_pos = first_new_pos = None
    if padded:
        valid = torch.ones(B, T0 + max_new_tokens, dtype=torch.bool)
        for r, n in enumerate(lens):
            valid[r, : T0 - n] = False
        valid = valid.to(device)
        prompt_pos = (valid[:, :T0].long().cumsum(1) - 1).clamp(min=0)
        first_new_pos = torch.tensor(lens, device=device)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, vocab, dtype=torch.bool, device=device)
        for r, p in enumerate(prompts):
            seen[r, torch.tensor(p, device=device)] = True
    generator = None
    if seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    eos = set() if eos_id is None else ({int(eos_id)} if isinstance(eos_id, int) else set(map(int, eos_id)))
    stops = [list(map(int, s)) for s in (stop or []) if len(s)]

    was_training = model.training
    model.eval()
    try:
        cache = model.new_kv_cache(B, T0 + max_new_tokens) if use_cache else None
        seq = ids
        logits = model(ids, kv_cache=cache, positions=prompt_pos,
                       attention_mask=valid[:, :T0] if padded else None, last_only=True)[:, -1]
        out: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        plain_greedy = temperature == 0 and repetition_penalty == 1.0
        for step in range(max_new_tokens):
            if not plain_greedy:
                logits = process_logits(logits.float(), seen, temperature, top_k, top_p, repetition_penalty)
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
            L = T0 + step + 1
            mask = valid[:, : L] if padded else None
            if cache is not None:
                pos = (first_new_pos + step)[:, None] if padded else None
                logits = model(nxt[:, None], kv_cache=cache, positions=pos, attention_mask=mask)[:, -1]
            else:
                seq = torch.cat([seq, nxt[:, None]], dim=1)
                pos = (valid[:, :L].long().cumsum(1) - 1).clamp(min=0) if padded else None
                logits = model(seq, positions=pos, attention_mask=mask, last_only=True)[:, -1]
    finally:
        model.train(was_training)
    return out


def generate_ids(model: nn.Module, ids: Any, max_new_tokens: int, **kwargs: Any) -> Any:
    """Continue ``ids`` with :func:`decode`'s options; return prompt + new tokens in the input's form.

    ``ids``: LongTensor ``(B, T)`` -> LongTensor ``(B, T + n)`` (rows that stopped early are
    filled with ``eos_id``, or 0 without one); ``(T,)`` -> ``(T + n,)``; a list of id lists
    -> a list of id lists. With ``truncate`` the returned prompts are the kept tails.
    """
    is_tensor = isinstance(ids, torch.Tensor)
    if is_tensor and ids.dim() not in (1, 2):
        raise LmlabError(f"ids must have shape (T,) or (B, T), got {tuple(ids.shape)}")
    rows = ids.reshape(-1, ids.shape[-1]).tolist() if is_tensor else [list(map(int, r)) for r in ids]
    _check_settings(max_new_tokens, kwargs.get("temperature", 1.0), kwargs.get("top_k"), kwargs.get("top_p"),
                    kwargs.get("repetition_penalty", 1.0))
    rows = _fit_prompts(rows, max_new_tokens, model.config.block_size, bool(kwargs.get("truncate")))
    new = decode(model, rows, max_new_tokens, **kwargs)
    if not is_tensor:
        return [p + x for p, x in zip(rows, new)]
    eos = kwargs.get("eos_id")
    fill = 0 if eos is None else (int(eos) if isinstance(eos, int) else int(list(eos)[0]))
    n = max(len(x) for x in new)
    full = [p + x + [fill] * (n - len(x)) for p, x in zip(rows, new)]
    result = torch.tensor(full, dtype=torch.long, device=ids.device)
    return result[0] if ids.dim() == 1 else result


class IncrementalDecoder:
    """Turn a growing list of token ids into text pieces for streaming.

    Decodes the whole output each time and emits what is new, holding back text that
    ends in an incomplete UTF-8 character (U+FFFD), so multi-token characters print whole.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token: int) -> str:
        """Add ``token``; return the newly completed text (possibly empty)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece = text[len(self.text):]
        self.text = text
        return piece

    def flush(self) -> str:
        """Return the text still held back (an incomplete character at the end), decoded as is."""
        text = self.tokenizer.decode(self.ids)
        piece = text[len(self.text):]
        self.text = text
        return piece


@dataclass
class Completion:
    """One row of :func:`generate_text`: the new text, its token ids and why it ended."""

    text: str
    ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "length", "eos" or "stop"


def generate_text(model: nn.Module, tokenizer: Any, prompts: str | Sequence[str], max_new_tokens: int,
                  stop: Sequence[str] | None = None, eos_id: int | Sequence[int] | None = None,
                  stream: Callable[[int, str], None] | None = None, **kwargs: Any) -> list[Completion]:
    """Continue text ``prompts`` (one string or several); return one :class:`Completion` per prompt.

    ``eos_id`` defaults to the tokenizer's end-of-text id; generation of a row stops at
    it or when its text contains a ``stop`` string (the text is cut before the stop
    string; the eos token is not part of the text). ``stream(row, piece)`` receives text
    as it is produced. An empty prompt starts from the end-of-text token. Other keyword
    arguments are :func:`decode`'s.
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if eos_id is None:
        eos_id = getattr(tokenizer, "eot_id", None)
    eos = set() if eos_id is None else ({int(eos_id)} if isinstance(eos_id, int) else set(map(int, eos_id)))
    encoded = []
    for t in texts:
        # the tokenizer.json's own post-processing applies (Llama 3's adds <|begin_of_text|>;
        # lmlab's tokenizers add nothing)
        ids = tokenizer.hf.encode(t).ids if hasattr(tokenizer, "hf") else list(tokenizer.encode(t))
        if not ids:
            if not eos:
                raise LmlabError("an empty prompt needs an end-of-text token to start from; give some text")
            ids = [min(eos)]
        encoded.append(ids)
    decoders = [IncrementalDecoder(tokenizer) for _ in texts]
    results = [Completion(text="") for _ in texts]
    pending = [""] * len(texts)  # decoded text held back because it may start a stop string
    stops = [s for s in (stop or []) if s]

    def emit(row: int, piece: str) -> None:
        if piece:
            results[row].text += piece
            if stream is not None:
                stream(row, piece)

    def on_token(row: int, token: int) -> bool:
        res = results[row]
        res.ids.append(token)
        if token in eos:
            res.finish_reason = "eos"
            return True
        tail = pending[row] + decoders[row].push(token)
        text = res.text + tail
        cuts = [c for c in (text.find(s, max(0, len(res.text) - len(s))) for s in stops) if c >= 0]
        if cuts:
            emit(row, text[len(res.text):min(cuts)])
            pending[row], res.finish_reason = "", "stop"
            return True
        hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        hold = min(hold, len(tail))
        emit(row, tail[: len(tail) - hold])
        pending[row] = tail[len(tail) - hold:]
        return False

    decode(model, encoded, max_new_tokens, eos_id=eos_id, on_token=on_token, **kwargs)
    for row in range(len(texts)):
        if results[row].finish_reason == "length":
            emit(row, pending[row] + decoders[row].flush())
    return results


@dataclass
class GenerateConfig:
    ckpt: Path | None = arg(None, "run folder, model.safetensors, or Hugging Face model folder")
    prompt: str = arg("", "prompt text ('' starts a new document from the end-of-text token)")
    prompt_file: Path | None = arg(None, "file with one prompt per line, generated as one batch "
                                         "(instead of --prompt)")
    max_new_tokens: int = arg(200, "tokens to generate per prompt")
    temperature: float = arg(0.8, "sampling temperature; 0 = greedy")
    top_k: int | None = arg(200, "sample among the k most likely tokens (none: all)")
    top_p: float | None = arg(None, "sample among the most likely tokens holding this probability mass")
    repetition_penalty: float = arg(1.0, "divide the logits of tokens already present by this (1: off)")
    stop: list[str] = arg([], "stop strings, comma-separated; \\n is a newline")
    seed: int | None = arg(None, "random seed for reproducible sampling")
    truncate: bool = arg(False, "keep the end of a prompt that is too long for the context")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = arg("auto", "model dtype (auto: as stored)")
    json: bool = arg(False, "print completions and speed as one JSON object instead of streaming text")


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").replace("\\t", "\t")


def run(cfg: GenerateConfig) -> None:
    """Generate text from a trained or imported model, streaming it to the terminal.

    Loads CKPT (an lmlab run folder or a Hugging Face folder with tokenizer.json), encodes
    the prompt(s) and decodes with the KV cache; prints tokens/s on stderr. Several prompts
    (--prompt-file) run as one left-padded batch. Example:
    lmlab generate --ckpt runs/tiny --prompt "ROMEO:" --max-new-tokens 100 --seed 1
    """
    import sys
    import time

    from lmlab.api import eos_ids, load_model_any, load_tokenizer_any
    from lmlab.device import resolve_device

    if cfg.ckpt is None:
        raise LmlabError("give --ckpt RUN (a run folder or a Hugging Face folder)")
    if not Path(cfg.ckpt).exists():
        raise LmlabError(f"{cfg.ckpt} does not exist; give a run directory, a model.safetensors or a "
                         "Hugging Face folder")
    if cfg.prompt_file is not None:
        if not Path(cfg.prompt_file).is_file():
            raise LmlabError(f"prompt file {cfg.prompt_file} does not exist; check --prompt-file")
        prompts = [line for line in Path(cfg.prompt_file).read_text(encoding="utf-8").splitlines() if line]
        if not prompts:
            raise LmlabError(f"{cfg.prompt_file} holds no prompts; write one prompt per line")
    else:
        prompts = [_unescape(cfg.prompt)]
    tokenizer = load_tokenizer_any(cfg.ckpt)
    if tokenizer is None:
        raise LmlabError(f"no tokenizer.json beside {cfg.ckpt}; "
                         "copy the tokenizer the model was trained with there")
    model = load_model_any(cfg.ckpt, resolve_device(cfg.device), cfg.dtype)
    from lmlab.models.decoder import Decoder

    if not isinstance(model, Decoder):
        raise LmlabError(f"{cfg.ckpt} holds a {type(model).__name__}; 'lmlab generate' decodes Transformer "
                         "decoders (GPT-2/LLaMA runs or Hugging Face folders)")
    streaming = len(prompts) == 1 and not cfg.json
    if streaming:
        print(prompts[0], end="", flush=True)

    def stream(row: int, piece: str) -> None:
        print(piece, end="", flush=True)

    t0 = time.perf_counter()
    results = generate_text(model, tokenizer, prompts, cfg.max_new_tokens,
                            stop=[_unescape(s) for s in cfg.stop],
                            eos_id=eos_ids(cfg.ckpt, tokenizer) or None, stream=stream if streaming else None,
                            temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                            repetition_penalty=cfg.repetition_penalty, seed=cfg.seed, truncate=cfg.truncate)
    seconds = time.perf_counter() - t0
    n_new = sum(len(r.ids) for r in results)
    speed = {"new_tokens": n_new, "seconds": round(seconds, 4),
             "tokens_per_s": round(n_new / max(seconds, 1e-9), 2)}
    if cfg.json:
        rows = [{"prompt": p, "text": r.text, "finish_reason": r.finish_reason, "tokens": len(r.ids)}
                for p, r in zip(prompts, results)]
        print(json.dumps({"completions": rows, **speed}, ensure_ascii=False))
        return
    if streaming:
        print()
    else:
        for i, (p, r) in enumerate(zip(prompts, results)):
            print(("" if i == 0 else "-----\n") + p + r.text)
    print(f"[{n_new} tokens in {seconds:.2f}s, {speed['tokens_per_s']:.1f} tokens/s]", file=sys.stderr)
