"""Constitutional AI's two stages (Bai et al. 2022) on any decoder, ours or imported from Hugging Face.

SL stage (:func:`revise`): the model answers each prompt, then critiques its own response under a
principle drawn from the constitution and revises it, with few-shot examples showing the format
(:mod:`lmlab.align.constitution`); ``--revisions N`` repeats critique and revision with a fresh
principle each round. The final revisions are written as SFT data (``revisions.jsonl``:
prompt/completion, or messages for a conversation prompt), the whole chains for reading
(``chains.jsonl``).

RL stage (:func:`label`): for each prompt and two responses a feedback model reads a multiple-choice
question under a drawn principle and the log-probabilities of its answers `` (A)`` and `` (B)``
decide; the question is asked in both orders and the two probabilities averaged, so a model that
prefers the first (or second) position gains nothing. The result is preference JSONL
(prompt/chosen/rejected, with ``ai_prob``, the AI's probability that chosen is better) for ``lmlab
reward train`` or ``lmlab dpo``. Pairs that carry a human label (a prompt/chosen/rejected file, or a
labelled corpus's pairs from ratings) report the agreement of the AI's choice with the human's; exact
ties (no preference) are left out of the output and count one half in the agreement. A pair whose
question does not fit the feedback model's context is left out and counted (``too_long``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lmlab.align.constitution import (
    OPTIONS,
    Prompt,
    Revision,
    choice_question,
    cut_field,
    load_constitution,
    sl_messages,
    sl_revision_messages,
    sl_revision_transcript,
    sl_transcript,
)
from lmlab.config import arg, save_config
from lmlab.errors import LmlabError


@dataclass
class ConstitutionOptions:
    """Which constitution and principles to use."""

    constitution: Path | None = arg(None, "YAML file of principles and few-shot examples (default: lmlab's, "
                                          "lmlab/align/constitution.yaml)")
    principles: list[str] | None = arg(None, "draw only from these principles, by name (e.g. "
                                             "positive,kind,constructive for the sentiment task)")


@dataclass
class ReviseConfig(ConstitutionOptions):
    """Options of ``lmlab cai revise``."""

    ckpt: Path | None = arg(None, "the model that answers, critiques and revises: a run folder or HF folder")
    prompts: str | None = arg(None, "prompts: a .jsonl ('prompt' or 'messages') or .txt file, or "
                                    "reviews:CORPUS")
    split: str = arg("train", "split of a reviews:CORPUS prompt source")
    limit: int | None = arg(None, "use at most this many prompts")
    out: Path | None = arg(None, "folder: revisions.jsonl (SFT data), chains.jsonl, config.yaml")
    overwrite: bool = arg(False, "replace the files of an earlier run in --out")
    template: Literal["plain", "chat"] = arg("plain", "plain: the paper's Human/Assistant transcript; chat: "
                                                      "the same turns under the chat template")
    shots: int = arg(2, "few-shot examples before each critique (the context's tail is kept if it is too "
                        "long)")
    revisions: int = arg(1, "rounds of critique and revision per response")
    max_new_tokens: int = arg(48, "tokens at most per response, critique and revision")
    temperature: float = arg(0.7, "sampling temperature (0: greedy)")
    top_p: float | None = arg(None, "nucleus sampling")
    batch_size: int = arg(16, "prompts decoded together")
    seed: int = arg(0, "seed of the principles drawn and of sampling")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = arg(True, "show a progress bar (--no-progress hides it)")
    json: bool = arg(False, "print the final figures as one JSON object")


@dataclass
class ReviseResult:
    """What the SL stage wrote."""

    out: str
    prompts: int
    written: int
    dropped_empty: int
    changed: float
    truncated_contexts: int
    principles: dict[str, int]
    mean_response_words: float
    mean_revision_words: float
    elapsed_s: float


@dataclass
class LabelConfig(ConstitutionOptions):
    """Options of ``lmlab cai label``."""

    feedback: Path | None = arg(None, "the feedback model: a run folder or HF folder")
    data: str | None = arg(None, "pairs: JSONL of prompt/chosen/rejected (a human label) or "
                                 "prompt/responses (2 or more samples, paired in order), or a labelled "
                                 "corpus (sentiment-movies: pairs from its ratings)")
    split: str = arg("train", "split of a labelled corpus")
    limit: int | None = arg(None, "label at most this many pairs")
    margin: float = arg(1.0, "a labelled corpus's pairs differ in mean rating by more than this")
    out: Path | None = arg(None, "preference JSONL to write (its config beside it: OUT.config.yaml)")
    overwrite: bool = arg(False, "replace an existing --out")
    template: Literal["plain", "chat"] = arg("plain", "how the feedback model reads the question: plain "
                                                      "text, or a user turn under the chat template")
    batch_size: int = arg(16, "pairs scored together")
    seed: int = arg(0, "seed of the principles drawn")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = arg(True, "show a progress bar (--no-progress hides it)")
    json: bool = arg(False, "print the final figures as one JSON object")


@dataclass
class LabelResult:
    """What the RL stage's labelling wrote and how the AI's labels compare with the human's: ``pairs``
    labelled (``too_long`` more did not fit the feedback model's context), ``written`` (all but
    ``ties``), the ``agreement`` with the ``human_labelled`` pairs' labels, the share of pairs where
    both orders agree (``consistent``), the mean probability of answer (A) (``first_position``: 0.5
    without position bias) and the mean probability of the AI's choice."""

    out: str
    pairs: int
    too_long: int
    written: int
    ties: int
    human_labelled: int
    agreement: float | None
    consistent: float
    first_position: float
    mean_ai_prob: float
    principles: dict[str, int]
    elapsed_s: float


@dataclass
class Pair:
    """Two responses to one prompt; ``human`` is 0 when a human preferred ``first``, None if unknown."""

    prompt: Prompt
    first: str
    second: str
    human: int | None = None


# ------------------------------------------------------------------ shared


def _load_model(path: Path | None, what: str, device: str) -> tuple[torch.nn.Module, Any, torch.device]:
    from lmlab.device import resolve_device
    from lmlab.loader import load

    if path is None:
        raise LmlabError(f"cai needs {what}")
    dev = resolve_device(device)
    model, tok = load(path, device=dev)
    if tok is None:
        raise LmlabError(f"{path} has no tokenizer.json; Constitutional AI needs the model's tokenizer")
    if type(model).__name__ != "Decoder":
        raise LmlabError(f"Constitutional AI needs a decoder (GPT-2, LLaMA, ...); {path} holds a "
                         f"{type(model).__name__}")
    return model.eval(), tok, dev


def _prepare_out(files: list[Path], overwrite: bool) -> None:
    taken = [f for f in files if f.exists()]
    if taken and not overwrite:
        raise LmlabError(f"{taken[0]} already exists; pass --overwrite or choose another --out")


def _ids(tok: Any, prompt: Prompt, template: str) -> list[int]:
    from lmlab.align.prompts import encode_prompt

    return encode_prompt(tok, prompt, template).ids


class _Sampler:
    """Continue batches of contexts; each text is cut where a new field would start."""

    def __init__(self, model: torch.nn.Module, tok: Any, cfg: ReviseConfig):
        from lmlab.align.prompts import stop_ids

        self.model, self.tok, self.cfg = model, tok, cfg
        self.stop = stop_ids(tok, cfg.template)
        self.limit = model.config.block_size - cfg.max_new_tokens
        self.truncated = 0
        self.calls = 0

    def __call__(self, contexts: list[list[int]]) -> list[tuple[str, str]]:
        """Return ``(raw, field)`` per context: the decoded new text, and it cut at a field marker."""
        from lmlab.align.constitution import FIELD_MARKERS
        from lmlab.generate.decode import decode

        if self.limit < 1:
            raise LmlabError(f"--max-new-tokens {self.cfg.max_new_tokens} leaves no room for a prompt in the "
                             f"model's context of {self.model.config.block_size}; lower it")
        out: list[tuple[str, str]] = []
        bs = self.cfg.batch_size
        for a in range(0, len(contexts), bs):
            batch = contexts[a:a + bs]
            self.truncated += sum(len(c) > self.limit for c in batch)
            made: list[list[int]] = [[] for _ in batch]

            def at_marker(row: int, token: int, made: list[list[int]] = made) -> bool:
                made[row].append(token)
                return any(m in self.tok.decode(made[row]) for m in FIELD_MARKERS)

            self.calls += 1
            new = decode(self.model, batch, self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                         top_p=self.cfg.top_p, eos_id=self.stop, seed=self.cfg.seed * 100_003 + self.calls,
                         on_token=at_marker, truncate=True)
            for ids in new:
                raw = self.tok.decode([t for t in ids if t not in self.stop])
                out.append((raw, cut_field(raw)))
        return out


# ------------------------------------------------------------------ SL stage


def revise(cfg: ReviseConfig) -> ReviseResult:
    """Run the SL stage (see the module docstring); return what it wrote. Bad input raises LmlabError."""
    from lmlab.align.prompts import check_template, read_prompts
    from lmlab.console import progress
    from lmlab.fileio import write_text

    if cfg.prompts is None or cfg.out is None:
        raise LmlabError("cai revise needs --ckpt MODEL, --prompts SPEC and --out DIR")
    check_template(cfg.template)
    if cfg.revisions < 1 or cfg.shots < 0 or cfg.batch_size < 1 or cfg.max_new_tokens < 1:
        raise LmlabError("--revisions, --batch-size and --max-new-tokens must be >= 1 and --shots >= 0")
    c = load_constitution(cfg.constitution, cfg.principles)
    if cfg.shots > len(c.examples):
        raise LmlabError(f"--shots {cfg.shots}: the constitution ({c.source}) has {len(c.examples)} examples")
    out = Path(cfg.out)
    files = [out / "revisions.jsonl", out / "chains.jsonl"]
    _prepare_out(files, cfg.overwrite)
    model, tok, _ = _load_model(cfg.ckpt, "--ckpt MODEL", cfg.device)
    prompts = read_prompts(cfg.prompts, cfg.split, cfg.limit)
    t0 = time.perf_counter()
    sample = _Sampler(model, tok, cfg)
    bar = progress(total=len(prompts) * (1 + 2 * cfg.revisions), desc="cai revise", unit="text",
                   disable=None if cfg.progress else True)

    def run(contexts: list[list[int]]) -> list[tuple[str, str]]:
        got = sample(contexts)
        bar.update(len(contexts))
        return got

    first = run([_ids(tok, p, cfg.template) for p in prompts])
    responses = [f for _, f in first]
    lead = [" " if isinstance(p, str) and cfg.template == "plain" and raw[:1].isspace() else ""
            for p, (raw, _) in zip(prompts, first)]
    chains: list[list[Revision]] = [[] for _ in prompts]
    alive = [bool(r) for r in responses]
    for r in range(cfg.revisions):
        idx = [i for i in range(len(prompts)) if alive[i]]
        drawn = {i: c.draw(cfg.seed, i, r) for i in idx}
        ask = sl_transcript if cfg.template == "plain" else sl_messages
        asks = {i: ask(c, cfg.shots, prompts[i], responses[i], chains[i], drawn[i]) for i in idx}
        critiques = dict(zip(idx, (f for _, f in run([_ids(tok, asks[i], cfg.template) for i in idx]))))
        if cfg.template == "plain":
            again = {i: sl_revision_transcript(asks[i], critiques[i], drawn[i]) for i in idx}
        else:
            again = {i: sl_revision_messages(asks[i], critiques[i], drawn[i]) for i in idx}
        revised = dict(zip(idx, (f for _, f in run([_ids(tok, again[i], cfg.template) for i in idx]))))
        for i in idx:
            chains[i].append(Revision(drawn[i].name, critiques[i], revised[i]))
            alive[i] = bool(critiques[i] and revised[i])
    bar.close()

    sft_rows, chain_rows, changed = [], [], 0
    for i, p in enumerate(prompts):
        kept = alive[i]
        chain_rows.append({"prompt": p, "response": responses[i],
                           "rounds": [dataclasses.asdict(x) for x in chains[i]], "kept": kept})
        if not kept:
            continue
        final = chains[i][-1].revision
        changed += final != responses[i]
        if isinstance(p, list):
            sft_rows.append({"messages": p + [{"role": "assistant", "content": final}]})
        else:
            sft_rows.append({"prompt": p, "completion": lead[i] + final})
    out.mkdir(parents=True, exist_ok=True)
    write_text(files[0], "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in sft_rows))
    write_text(files[1], "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in chain_rows))
    save_config(dataclasses.replace(cfg, overwrite=False), out / "config.yaml")

    def words(texts: list[str]) -> float:
        return round(sum(len(t.split()) for t in texts) / max(len(texts), 1), 2)

    finals = [ch[-1].revision for ch, k in zip(chains, alive) if k]
    return ReviseResult(out=str(out), prompts=len(prompts), written=len(sft_rows),
                        dropped_empty=len(prompts) - len(sft_rows),
                        changed=round(changed / max(len(sft_rows), 1), 4),
                        truncated_contexts=sample.truncated,
                        principles=dict(Counter(x.principle for ch in chains for x in ch)),
                        mean_response_words=words(responses), mean_revision_words=words(finals),
                        elapsed_s=round(time.perf_counter() - t0, 2))


# ------------------------------------------------------------------ RL stage: AI feedback


def answer_ids(tok: Any, template: str) -> list[list[int]]:
    """Return the ids of the answers (A) and (B) in ``template``'s layout (`` (A)`` after plain text)."""
    from lmlab.align.prompts import encode_response

    return [encode_response(tok, (" " if template == "plain" else "") + o, template, ended=False)
            for o in OPTIONS]


def question_ids(tok: Any, question: str, template: str) -> list[int]:
    """Return the ids of a multiple-choice question: plain text, or a user turn with the assistant's
    generation prompt."""
    return _ids(tok, question if template == "plain" else [{"role": "user", "content": question}], template)


def option_logprobs(model: torch.nn.Module, tok: Any, questions: list[str], template: str,
                    batch_size: int = 16) -> torch.Tensor:
    """Return ``(N, 2)``: the log-probability ``model`` gives the answers (A) and (B) after each
    multiple-choice question (``plain``: the text then `` (A)``; ``chat``: a user turn, the assistant
    answering ``(A)``). Raises LmlabError when a question does not fit the model's context."""
    from lmlab.align.sequences import join, sequence_logprobs

    answers = answer_ids(tok, template)
    pad = tok.pad_id if tok.pad_id is not None else tok.eot_id
    block = model.config.block_size
    out = []
    with torch.no_grad():
        for a in range(0, len(questions), batch_size):
            contexts = []
            for k, q in enumerate(questions[a:a + batch_size]):
                ids = question_ids(tok, q, template)
                if len(ids) + max(map(len, answers)) > block:
                    raise LmlabError(f"question {a + k + 1} is {len(ids)} tokens with its answer, more than "
                                     f"the feedback model's context of {block}; shorten the texts or use a "
                                     "model with a longer context")
                contexts.append(ids)
            rows = [c for c in contexts for _ in OPTIONS]
            joined = join(rows, answers * len(contexts), pad, device=next(model.parameters()).device)
            out.append(sequence_logprobs(model, joined).view(-1, len(OPTIONS)).float().cpu())
    return torch.cat(out)


def ai_preference(ab: torch.Tensor, ba: torch.Tensor) -> torch.Tensor:
    """Return ``(N,)``: the probability that the first response is better, from the option log-probs of
    the question asked with it as (A) (``ab``) and as (B) (``ba``): the mean of the two answers'
    normalised probabilities, which cancels a preference for a position."""
    return 0.5 * (ab.softmax(-1)[:, 0] + ba.softmax(-1)[:, 1])


def pairs_to_label(spec: str, split: str = "train", limit: int | None = None,
                   margin: float = 1.0) -> list[Pair]:
    """Return the pairs to label from ``spec`` (see :class:`LabelConfig`): human-labelled from a
    prompt/chosen/rejected file (every line) or a labelled corpus's ratings (``split``), unlabelled
    from prompt/responses. Raises LmlabError naming the file and line of a bad record."""
    from lmlab.align import preferences
    from lmlab.data.archives import decode_utf8, jsonl_objects

    path = Path(spec)
    if not path.is_file():
        if spec.endswith((".jsonl", ".json")):
            raise LmlabError(f"--data {spec}: no such file")
        return [Pair(p.prompt_value(), p.chosen, p.rejected, 0)
                for p in preferences.pairs_from_ratings(spec, split, margin=margin, max_pairs=limit)]
    text, _ = decode_utf8(path.read_bytes())
    rows = list(jsonl_objects(text, path))
    if rows and all("responses" in obj for _, obj in rows):
        out = []
        for lineno, obj in rows:
            rs = obj["responses"]
            if not isinstance(rs, list) or len(rs) < 2 or not all(isinstance(r, str) for r in rs):
                raise LmlabError(f"{path}:{lineno}: 'responses' must be a list of 2 or more texts")
            if not isinstance(obj.get("prompt", ""), (str, list)):
                raise LmlabError(f"{path}:{lineno}: 'prompt' must be a text or a list of messages")
            out += [Pair(obj.get("prompt", ""), rs[k], rs[k + 1]) for k in range(0, len(rs) - 1, 2)
                    if rs[k] != rs[k + 1]]
        return out[:limit] if limit is not None else out
    return [Pair(p.prompt_value(), p.chosen, p.rejected, 0) for p in preferences.read_pairs(path)][:limit]


def label(cfg: LabelConfig) -> LabelResult:
    """Run the RL stage's AI labelling (see the module docstring); return what it wrote and the
    agreement with human labels. Bad input raises LmlabError."""
    from lmlab.align.prompts import check_template
    from lmlab.console import progress
    from lmlab.fileio import write_text

    if cfg.data is None or cfg.out is None:
        raise LmlabError("cai label needs --feedback MODEL, --data PAIRS and --out PAIRS.jsonl")
    check_template(cfg.template)
    if cfg.batch_size < 1:
        raise LmlabError("--batch-size must be at least 1")
    c = load_constitution(cfg.constitution, cfg.principles)
    out = Path(cfg.out)
    conf = out.with_name(out.stem + ".config.yaml")
    _prepare_out([out], cfg.overwrite)
    pairs = pairs_to_label(cfg.data, cfg.split, cfg.limit, cfg.margin)
    if not pairs:
        raise LmlabError(f"{cfg.data} gave no pairs to label")
    model, tok, _ = _load_model(cfg.feedback, "--feedback MODEL", cfg.device)
    t0 = time.perf_counter()
    drawn = [c.draw(cfg.seed, i) for i in range(len(pairs))]
    # A pair whose question does not fit the feedback model's context is left out (and counted).
    room = model.config.block_size - max(map(len, answer_ids(tok, cfg.template)))
    fits = [max(len(question_ids(tok, choice_question(p, x.prompt, *rs), cfg.template))
                for rs in ((x.first, x.second), (x.second, x.first))) <= room for x, p in zip(pairs, drawn)]
    if not any(fits):
        raise LmlabError(f"every pair's question is longer than the feedback model's context of "
                         f"{model.config.block_size} tokens; use shorter texts or a model with a longer "
                         "context")
    too_long = fits.count(False)
    pairs = [x for x, f in zip(pairs, fits) if f]
    drawn = [p for p, f in zip(drawn, fits) if f]
    ab, ba = [], []
    bar = progress(total=len(pairs), desc="cai label", unit="pair", disable=None if cfg.progress else True)
    for a in range(0, len(pairs), cfg.batch_size):
        chunk = list(zip(pairs[a:a + cfg.batch_size], drawn[a:a + cfg.batch_size]))
        ab.append(option_logprobs(model, tok, [choice_question(p, x.prompt, x.first, x.second)
                                               for x, p in chunk], cfg.template, cfg.batch_size))
        ba.append(option_logprobs(model, tok, [choice_question(p, x.prompt, x.second, x.first)
                                               for x, p in chunk], cfg.template, cfg.batch_size))
        bar.update(len(chunk))
    bar.close()
    lab, lba = torch.cat(ab), torch.cat(ba)
    p_first = ai_preference(lab, lba)
    rows, agree, labelled, ties = [], 0.0, 0, 0
    for x, p, prob in zip(pairs, drawn, p_first.tolist()):
        if prob == 0.5:
            ties += 1
        if x.human is not None:
            labelled += 1
            agree += 0.5 if prob == 0.5 else float((prob > 0.5) == (x.human == 0))
        if prob == 0.5:
            continue
        chosen, rejected = (x.first, x.second) if prob > 0.5 else (x.second, x.first)
        row = {"prompt": x.prompt, "chosen": chosen, "rejected": rejected,
               "ai_prob": round(max(prob, 1 - prob), 6), "principle": p.name}
        if x.human is not None:
            row["human_agrees"] = (prob > 0.5) == (x.human == 0)
        rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    save_config(dataclasses.replace(cfg, overwrite=False), conf)
    first_ab, first_ba = lab.softmax(-1)[:, 0], lba.softmax(-1)[:, 0]
    return LabelResult(out=str(out), pairs=len(pairs), too_long=too_long, written=len(rows), ties=ties,
                       human_labelled=labelled,
                       agreement=round(agree / labelled, 4) if labelled else None,
                       consistent=round(float(((first_ab > 0.5) != (first_ba > 0.5)).float().mean()), 4),
                       first_position=round(float(torch.cat([first_ab, first_ba]).mean()), 4),
                       mean_ai_prob=round(float(torch.maximum(p_first, 1 - p_first).mean()), 4),
                       principles=dict(Counter(p.name for p in drawn)),
                       elapsed_s=round(time.perf_counter() - t0, 2))
