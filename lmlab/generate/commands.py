"""CLI command ``lmlab generate``: text from a run or a Hugging Face folder, streamed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmlab.config import Precision, arg
from lmlab.errors import LmlabError


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
    num_beams: int = arg(1, "beam search with this many beams (1: sample, or greedy at temperature 0)")
    length_penalty: float = arg(1.0, "beam search: a hypothesis scores log-probability / length**this "
                                     "(> 0 favours longer outputs)")
    early_stopping: Literal["false", "true", "never"] = arg(
        "false", "beam search: true stops once num-beams hypotheses ended; false when the best running one "
        "cannot win at its current length (Hugging Face's default); never when it cannot at any length")
    stop: list[str] = arg([], "stop strings, comma-separated; \\, is a comma, \\n a newline, \\t a tab; "
                              "repeat the flag to add more (--stop '\\n\\n' --stop 'THE END')")
    seed: int | None = arg(None, "random seed for reproducible sampling")
    truncate: bool = arg(False, "keep the end of a prompt that is too long for a Transformer's context "
                                "(recurrent LMs, ELMo and the NPLM have no limit)")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: Precision = arg("auto", "model dtype (auto: as stored)")
    mla_decode: Literal["naive", "absorbed"] | None = arg(
        None, "MLA (DeepSeek) models: attend over the cached latent with W_UK/W_UV absorbed into the query "
        "and output (absorbed, the default) or by expanding it to keys and values (naive); same outputs")
    json: bool = arg(False, "print completions and speed as one JSON object instead of streaming text")


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").replace("\\t", "\t")


def run(cfg: GenerateConfig) -> None:
    """Generate text from a trained or imported model, streaming it to the terminal.

    Loads CKPT (an lmlab run folder or a Hugging Face folder with tokenizer.json), encodes
    the prompt(s) and decodes; prints tokens/s on stderr. Works for Transformer decoders
    (GPT-2/LLaMA runs, Hugging Face folders: KV cache, context limited to block_size) and
    the pre-Transformer LMs: RNN/LSTM/GRU runs (carried recurrent state), ELMo (its
    forward LM) and the NPLM (its last `context` tokens); these have no context limit.
    Encoder-decoders (Transformer, T5, BART runs and Hugging Face folders) read the prompt as
    the source and print the target they generate (cached self- and cross-attention).
    --num-beams N runs beam search (with --length-penalty, --early-stopping). MLA (DeepSeek)
    models decode over their cached latent with --mla-decode absorbed (default) or naive. Several
    prompts (--prompt-file) run as one batch; each row decodes as if alone. Examples:
    lmlab generate --ckpt runs/tiny --prompt "ROMEO:" --max-new-tokens 100 --seed 1
    lmlab generate --ckpt runs/t5 --prompt "translate English to German: Hello" --num-beams 4
    """
    import sys
    import time

    from lmlab.device import resolve_device
    from lmlab.generate.steps import family
    from lmlab.generate.text import generate_text
    from lmlab.loader import eos_ids, load_model_any, load_tokenizer_any

    if cfg.ckpt is None:
        raise LmlabError("give --ckpt RUN (a run folder or a Hugging Face folder)")
    if not Path(cfg.ckpt).exists():
        raise LmlabError(f"{cfg.ckpt} does not exist; give a run directory, a model.safetensors or a "
                         "Hugging Face folder")
    if cfg.prompt_file is not None:
        if not Path(cfg.prompt_file).is_file():
            raise LmlabError(f"prompt file {cfg.prompt_file} does not exist; check --prompt-file")
        try:
            text = Path(cfg.prompt_file).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            line = e.object[: e.start].count(b"\n") + 1
            where = f"byte 0x{e.object[e.start]:02x} on line {line}"
            raise LmlabError(f"prompt file {cfg.prompt_file} is not UTF-8 text ({where}); re-save it as "
                             "UTF-8, e.g. with iconv -f latin1 -t utf-8") from None
        prompts = [line for line in text.splitlines() if line]
        if not prompts:
            raise LmlabError(f"{cfg.prompt_file} holds no prompts; write one prompt per line")
    else:
        prompts = [_unescape(cfg.prompt)]
    tokenizer = load_tokenizer_any(cfg.ckpt)
    if tokenizer is None:
        raise LmlabError(f"no tokenizer.json beside {cfg.ckpt}; "
                         "copy the tokenizer the model was trained with there")
    model = load_model_any(cfg.ckpt, resolve_device(cfg.device), cfg.dtype)
    if cfg.mla_decode is not None:
        if family(model) != "decoder":
            raise LmlabError(f"--mla-decode applies to MLA decoders (DeepSeek); {cfg.ckpt} holds a "
                             f"{type(model).__name__}; drop the option")
        model.set_mla_decode(cfg.mla_decode)
    encdec = family(model) == "encdec"  # refuses a model that cannot generate before printing anything
    streaming = len(prompts) == 1 and not cfg.json
    if streaming and not encdec:  # an encoder-decoder's output is the target alone, not a continuation
        print(prompts[0], end="", flush=True)

    def stream(row: int, piece: str) -> None:
        print(piece, end="", flush=True)

    t0 = time.perf_counter()
    results = generate_text(model, tokenizer, prompts, cfg.max_new_tokens,
                            stop=[_unescape(s) for s in cfg.stop],
                            eos_id=None if encdec else (eos_ids(cfg.ckpt, tokenizer) or None),
                            stream=stream if streaming else None, num_beams=cfg.num_beams,
                            length_penalty=cfg.length_penalty,
                            early_stopping={"true": True, "false": False}.get(cfg.early_stopping, "never"),
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
            print(("" if i == 0 else "-----\n") + (f"{p}\n=> {r.text}" if encdec else p + r.text))
    print(f"[{n_new} tokens in {seconds:.2f}s, {speed['tokens_per_s']:.1f} tokens/s]", file=sys.stderr)


@dataclass
class FillMaskConfig:
    ckpt: Path | None = arg(None, "an encoder: run folder, model.safetensors or Hugging Face folder "
                                  "(BertForMaskedLM, RobertaForMaskedLM, ...)")
    text: str | None = arg(None, "text with one or more mask tokens ([MASK] for BERT, <mask> for RoBERTa)")
    top_k: int = arg(5, "candidates per mask")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    json: bool = arg(False, "print the candidates as one JSON object")


def fill_mask(cfg: FillMaskConfig) -> None:
    """The most likely tokens, with probabilities, at each mask token of a text (BERT, RoBERTa).

    The mask token is the tokenizer's ([MASK], <mask>, or <|mask|> for lmlab tokenizers);
    the text is encoded with the tokenizer's template ([CLS] ... [SEP]). Example:
    lmlab fill-mask --ckpt runs/bert --text "The [MASK] of Denmark" --top-k 5
    """
    from lmlab.device import resolve_device
    from lmlab.generate.fill_mask import check_fill_mask_model
    from lmlab.generate.fill_mask import fill_mask as fill
    from lmlab.loader import load_model_any, load_tokenizer_any

    if cfg.ckpt is None or cfg.text is None:
        raise LmlabError("fill-mask needs --ckpt RUN (an encoder) and --text \"... [MASK] ...\"")
    tokenizer = load_tokenizer_any(cfg.ckpt) if Path(cfg.ckpt).exists() else None
    model = check_fill_mask_model(load_model_any(cfg.ckpt, resolve_device(cfg.device)))
    if tokenizer is None:
        raise LmlabError(f"no tokenizer.json beside {cfg.ckpt}; copy the tokenizer the model was trained "
                         "with there")
    fills = fill(model, tokenizer, cfg.text, cfg.top_k)
    if cfg.json:
        print(json.dumps({"text": cfg.text, "masks": [f.as_dict() for f in fills]}, ensure_ascii=False))
        return
    for n, f in enumerate(fills, 1):
        if len(fills) > 1:
            print(f"mask {n} (token {f.index}):")
        for c in f.candidates:
            print(f"  {c.prob:7.4f}  {c.text.strip() or repr(c.text)}")  # a newline shows as '\n'
