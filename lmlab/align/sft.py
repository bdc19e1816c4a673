"""Supervised fine-tuning on conversations: the chat template's ids, the loss only on what the
assistant wrote (each assistant turn and its closing ``<|im_end|>``, so the model learns to end a
turn), through the one Trainer.

Data: JSONL, one conversation a line, either ``{"messages": [{"role", "content"}, ...]}`` ending
with an assistant turn, or ``{"prompt": ..., "completion": ...}`` (completion-only loss). One line
in ten (by a hash of the line) is held out for validation.

``template`` lays out prompt/completion records as :mod:`lmlab.align.prompts` does for sampling:
``chat`` makes them a user turn and the assistant's answer; ``plain`` makes them raw text (the
end-of-text token, the prompt, the completion closed by the end-of-text token), for a base model
that continues text (the sentiment task). A ``messages`` record is a chat whatever the template.

``pack`` concatenates conversations (in file order) into rows of up to ``max_len`` tokens, as
Hugging Face's simple packing: every target is the same as unpacked, but a later conversation of a
row attends to the earlier ones (no attention mask between them), and there is less padding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from lmlab.config import Precision, arg, save_config
from lmlab.errors import LmlabError
from lmlab.train.options import LoopOptions, OptimOptions

VAL_SHARE = 10  # one conversation in VAL_SHARE goes to validation
IGNORE = -100  # the label of a position whose next token is not learned


@dataclass
class SFTConfig(LoopOptions):
    """Options of ``lmlab sft``."""

    ckpt: Path | None = arg(None, "the model to fine-tune: a run folder, model file or imported HF run")
    data: Path | None = arg(None, "conversations: JSONL with 'messages' (ending with an assistant turn; "
                                  "optional 'tools' listed in the system turn) or 'prompt'/'completion' "
                                  "per line")
    out: Path | None = arg(None, "run folder: config.yaml, model.safetensors, tokenizer.json, metrics.jsonl, "
                                 "state/")
    overwrite: bool = arg(False, "start a new run in an --out that already holds one")
    resume: bool = arg(False, "continue the run in --out from its latest checkpoint (same options)")
    epochs: float | None = arg(None, "passes over the training conversations (sets --max-steps; 1 when no "
                                     "--max-steps, --max-tokens or --time-budget is given)")
    batch_size: int = arg(8, "conversations per micro-batch")
    max_len: int = arg(256, "tokens per conversation; longer ones are refused (say which line)")
    template: Literal["chat", "plain"] = arg(
        "chat", "how prompt/completion records are laid out: chat (a user turn and the assistant's answer) "
        "or plain (raw text: end-of-text, the prompt, the completion and end-of-text; for base models); "
        "'messages' records are always chats")
    pack: bool = arg(False, "pack conversations into rows of up to --max-len tokens (less padding; a row's "
                            "later conversations attend to its earlier ones, as HF's simple packing)")
    optim: OptimOptions = arg(OptimOptions(lr=1e-4, min_lr=1e-5, warmup_fraction=0.05, warmup_steps=0,
                                           weight_decay=0.0, beta2=0.999), "AdamW and its schedule")
    precision: Precision = arg("auto", "auto = bf16 autocast where the hardware has it, else fp32")
    seed: int = arg(1337, "seed of the data order and dropout")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = arg(True, "show a progress bar (--no-progress hides it)")
    json: bool = arg(False, "print the final figures as one JSON object")


@dataclass
class SFTResult:
    """How an SFT run ended."""

    out: str
    step: int
    elapsed_s: float
    train_conversations: int
    val_conversations: int
    train_rows: int
    first_loss: float | None
    val_loss: float | None
    interrupted: bool = False


class Conversation(NamedTuple):
    """A record of an SFT file: its line, its messages, whether it was a prompt/completion pair
    (laid out by the template) rather than a ``messages`` chat, and the tools its system turn lists
    (OpenAI's fine-tuning format: a ``tools`` field beside ``messages``)."""

    lineno: int
    messages: list[dict[str, Any]]
    pair: bool = False
    tools: list[dict[str, Any]] | None = None


def read_conversations(path: Path) -> list[Conversation]:
    """Return the conversations of the JSONL file ``path`` (a prompt/completion pair as a user and an
    assistant message, marked ``pair``); raise LmlabError naming the line for a record of neither
    format or one without a final assistant turn."""
    from lmlab.data.archives import decode_utf8, jsonl_objects
    from lmlab.data.chat import check_messages
    from lmlab.data.tools import check_tools

    if not Path(path).is_file():
        raise LmlabError(f"{path} does not exist; give a JSONL file of conversations")
    text, _ = decode_utf8(Path(path).read_bytes())
    out = []
    for lineno, obj in jsonl_objects(text, path):
        pair = "messages" not in obj
        if not pair:
            messages = obj["messages"]
        elif isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str):
            messages = [{"role": "user", "content": obj["prompt"]},
                        {"role": "assistant", "content": obj["completion"]}]
        else:
            raise LmlabError(f"{path}:{lineno} has neither 'messages' nor 'prompt' and 'completion'")
        check_messages(messages if isinstance(messages, list) else [], f"{path}:{lineno}")
        if messages[-1]["role"] != "assistant":
            raise LmlabError(f"{path}:{lineno}: the conversation ends without an assistant turn, so there is "
                             "nothing to learn; end it with {\"role\": \"assistant\", ...}")
        tools = obj.get("tools")
        if tools is not None:
            check_tools(tools, f"{path}:{lineno}: tools")
        out.append(Conversation(lineno, messages, pair, tools))
    if not out:
        raise LmlabError(f"{path} holds no conversations")
    return out


def _held_out(c: Conversation) -> bool:
    key = json.dumps([c.lineno, c.messages], sort_keys=True).encode()
    return int(hashlib.sha256(key).hexdigest()[:8], 16) % VAL_SHARE == 0


def encode_conversation(tokenizer: Any, c: Conversation, template: str) -> tuple[list[int], list[int]]:
    """Return the ids of conversation ``c`` and per id whether it is learned (1: the assistant's
    tokens and their closing stop token) under ``template`` (see the module docstring)."""
    from lmlab.align.prompts import check_template, encode_prompt, encode_response
    from lmlab.data.chat import encode_chat

    check_template(template)
    if c.pair and template == "plain":
        prompt = encode_prompt(tokenizer, c.messages[0]["content"], "plain").ids
        response = encode_response(tokenizer, c.messages[1]["content"], "plain", ended=True)
        return prompt + response, [0] * len(prompt) + [1] * len(response)
    enc = encode_chat(tokenizer, c.messages, tools=c.tools)
    return enc.ids, enc.assistant_mask


def encode_for_sft(tokenizer: Any, path: Path, conversations: list[Conversation], max_len: int,
                   template: str = "chat") -> tuple[list[list[int]], list[list[int]]]:
    """Return ``(inputs, targets)`` per conversation: the ids but the last, and the next ids where
    an assistant wrote them (else -100). Raises LmlabError naming the line of a conversation longer
    than ``max_len`` tokens."""
    inputs, targets = [], []
    for c in conversations:
        ids, mask = encode_conversation(tokenizer, c, template)
        if len(ids) > max_len:
            raise LmlabError(f"{path}:{c.lineno} is {len(ids)} tokens, more than --max-len {max_len}; "
                             "raise --max-len (up to the model's context) or shorten it")
        inputs.append(ids[:-1])
        targets.append([t if m else IGNORE for t, m in zip(ids[1:], mask[1:])])
    return inputs, targets


def pack(inputs: list[list[int]], targets: list[list[int]],
         max_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """Return ``(inputs, targets)`` rows, each the concatenation of consecutive examples while it
    stays within ``max_len`` tokens (an example is never split). Every target keeps its input
    position's own next token; an example's first id is never a target (the one before it belongs to
    the previous example), as unpacked."""
    rows_x: list[list[int]] = []
    rows_y: list[list[int]] = []
    for x, y in zip(inputs, targets):
        if rows_x and len(rows_x[-1]) + len(x) <= max_len:
            rows_x[-1] = rows_x[-1] + x
            rows_y[-1] = rows_y[-1] + y
        else:
            rows_x.append(list(x))
            rows_y.append(list(y))
    return rows_x, rows_y


def sft_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Return the mean next-token loss of ``model`` over the target tokens of ``batch``
    (``input_ids``, ``labels`` with -100 where nothing is learned). Raises LmlabError when no label
    is a target, as that mean would be NaN."""
    if not bool((batch["labels"] != IGNORE).any()):
        raise LmlabError("a batch has no target token (every label is -100), so its loss is undefined; "
                         "each conversation needs an assistant turn (or a completion) within --max-len")
    return model(batch["input_ids"], targets=batch["labels"])


def load_decoder(path: Path, device: Any = "cpu", what: str = "the policy") -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` of the run ``path`` on ``device``; raise LmlabError naming
    ``what`` needs it unless the model is a decoder with a tokenizer."""
    from lmlab.loader import load

    model, tokenizer = load(path, device=device)
    if tokenizer is None:
        raise LmlabError(f"{path} has no tokenizer.json; {what} needs the model's tokenizer")
    if type(model).__name__ != "Decoder":
        raise LmlabError(f"{what} needs a decoder (GPT-2, LLaMA, ...); {path} holds a {type(model).__name__}")
    return model, tokenizer


def sft(cfg: SFTConfig, saved_config: Any = None) -> SFTResult:
    """Fine-tune ``cfg.ckpt`` on the conversations in ``cfg.data``; return the result (see the module
    docstring). ``saved_config`` is the config written as OUT/config.yaml when a command that runs
    SFT as one of its stages calls this (default: ``cfg``). Bad input raises LmlabError naming the
    file and line."""
    import torch

    from lmlab.adapt.examples import ExampleBatches
    from lmlab.align.report import CURVES, plot_curves, run_settings, write_run_report
    from lmlab.device import autocast, resolve_device, resolve_precision
    from lmlab.fileio import write_bytes
    from lmlab.markdown import inline_code
    from lmlab.models.registry import save_model
    from lmlab.train import checkpoint as ckpt
    from lmlab.train.loop import Trainer, TrainSettings

    if cfg.ckpt is None or cfg.data is None or cfg.out is None:
        raise LmlabError("sft needs --ckpt RUN, --data CONVERSATIONS.jsonl and --out RUN2")
    out = Path(cfg.out)
    if cfg.resume and ckpt.latest_step(out) is None:
        raise LmlabError(f"{out} has no checkpoint to resume; drop --resume to start a new run there")
    if not cfg.resume and ckpt.latest_step(out) is not None and not cfg.overwrite:
        raise LmlabError(f"{out} already holds a run; pass --resume, --overwrite or another --out")
    model, tokenizer = load_decoder(cfg.ckpt, what="SFT")
    max_len = min(cfg.max_len, model.config.block_size)
    conversations = read_conversations(Path(cfg.data))
    val = [c for c in conversations if _held_out(c)]
    train = [c for c in conversations if not _held_out(c)] or conversations
    x, y = encode_for_sft(tokenizer, Path(cfg.data), train, max_len, cfg.template)
    vx, vy = encode_for_sft(tokenizer, Path(cfg.data), val, max_len, cfg.template)
    n_train = len(x)
    if cfg.pack:
        x, y = pack(x, y, max_len)
    device = resolve_device(cfg.device)
    precision = resolve_precision(device, cfg.precision)
    no_length = cfg.max_steps is None and cfg.max_tokens is None and cfg.time_budget is None
    if cfg.epochs is not None or no_length:
        steps = max(1, math.ceil((cfg.epochs or 1.0) * len(x) / cfg.batch_size))
        cfg = dataclasses.replace(cfg, max_steps=steps, epochs=None)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eot_id
    torch.manual_seed(cfg.seed)
    batches = ExampleBatches(x, y, cfg.batch_size, cfg.seed, pad, device)

    def evaluator(m: torch.nn.Module) -> dict[str, float]:
        was = m.training
        m.eval()
        total, n = 0.0, 0
        with torch.no_grad(), autocast(device, precision):
            for a in range(0, len(vx), cfg.batch_size):
                b = ExampleBatches(vx[a:a + cfg.batch_size], vy[a:a + cfg.batch_size],
                                   len(vx[a:a + cfg.batch_size]), 0, pad, device)
                batch = b.next()
                k = int((batch["labels"] != -100).sum())
                total += float(sft_loss(m, batch)) * k
                n += k
        m.train(was)
        return {"val_loss": round(total / max(n, 1), 6)}

    settings = TrainSettings(**cfg.loop_options(), optim=cfg.optim, precision=precision,
                             show_progress=cfg.progress)
    trainer = Trainer(model.train(), sft_loss, batches, settings, out_dir=out, device=device,
                      evaluator=evaluator if vx else None, model_config=model.config.to_dict(),
                      write_weights=lambda m, p: save_model(m, p))
    out.mkdir(parents=True, exist_ok=True)
    saved = cfg if saved_config is None else saved_config
    save_config(dataclasses.replace(saved, resume=False, overwrite=False, stop_at_step=None,
                                    precision=precision), out / "config.yaml")
    write_bytes(out / "tokenizer.json", tokenizer.hf.to_str().encode("utf-8"))
    t0 = time.perf_counter()
    result = trainer.fit(resume=cfg.resume)
    from lmlab.train.log import read_metrics

    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    elapsed = result.elapsed or time.perf_counter() - t0
    res = SFTResult(out=str(out), step=result.step, elapsed_s=round(elapsed, 2),
                    train_conversations=n_train, val_conversations=len(vx), train_rows=len(x),
                    first_loss=round(losses[0], 6) if losses else None,
                    val_loss=result.last_record.get("val_loss"), interrupted=result.interrupted)
    write_run_report(
        out, "Supervised fine-tuning", f"{inline_code(cfg.ckpt)} fine-tuned on the conversations of "
        f"{inline_code(cfg.data)}, the loss (nats per token) only on what the assistant wrote; one "
        f"conversation in {VAL_SHARE} is held out for the validation loss.",
        run_settings(cfg, "ckpt", "data", "template", "pack", "batch_size", "max_len"),
        {"training": {"conversations": n_train, "rows": len(x), "first loss": res.first_loss,
                      "steps": res.step},
         "validation": {"conversations": len(vx), "loss": res.val_loss}},
        plot_curves(out, [("loss", ("loss", "val_loss"))], out / CURVES), res.interrupted)
    return res
