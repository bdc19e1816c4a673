"""The ``lmlab`` command line: one subcommand per area of the lab.

Each command is a function ``run(cfg: SomeConfig)`` in its own module; its config
dataclass (the annotation of the first parameter) defines the flags, and its
docstring is the ``--help`` description. The table below maps command names to those
functions, so adding a command is one line here and nothing imports a command's
module (or torch) until that command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import inspect
import os
import sys
import traceback
import typing
from collections.abc import Callable

from lmlab.config import add_config_arguments, parse_config, to_yaml
from lmlab.errors import LmlabError, Terminated

# command words -> ("module:function", one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "corpora": ("lmlab.data.commands:corpora", "list the built-in corpora and how to use your own"),
    "data prepare": ("lmlab.data.commands:prepare", "tokenize a corpus into train.bin/val.bin + tokenizer.json"),
    "data info": ("lmlab.data.commands:info", "show the meta and a decoded sample of prepared data"),
    "data instructions": ("lmlab.data.commands:instructions", "write an instruction set made from real data (sentiment, Shakespeare, arithmetic) as conversations for lmlab sft"),
    "tokenizer train": ("lmlab.data.commands:tokenizer_train", "train a tokenizer on a corpus and save tokenizer.json"),
    "tokenizer encode": ("lmlab.data.commands:tokenizer_encode", "encode text to token ids with a tokenizer.json"),
    "tokenizer decode": ("lmlab.data.commands:tokenizer_decode", "decode token ids to text with a tokenizer.json"),
    "pretrain": ("lmlab.train.commands:pretrain", "pretrain a language model (GPT-2/LLaMA, NPLM, RNN/LSTM/GRU, ELMo presets)"),
    "eval": ("lmlab.evaluate.commands:evaluate", "perplexity and bits per byte (decoders), masked-token loss and PLL (encoders), conditional bpb (encoder-decoders)"),
    "longctx passkey": ("lmlab.evaluate.commands:passkey", "passkey retrieval accuracy by context length and depth, with peak memory, table and plot"),
    "longctx mqar": ("lmlab.evaluate.commands:mqar", "multi-query associative recall (MQAR) accuracy by context length and depth, with peak memory"),
    "longctx data": ("lmlab.evaluate.commands:longctx_data", "write passkey or MQAR examples as prepared data to train on (one example per window, loss on the answers)"),
    "generate": ("lmlab.generate.commands:run", "generate text from a run or Hugging Face folder (streams, KV cache, beam search; source -> target for T5/BART)"),
    "fill-mask": ("lmlab.generate.commands:fill_mask", "top-k tokens with probabilities at each [MASK] of a text (BERT/RoBERTa)"),
    "import hf": ("lmlab.interop.commands:import_hf", "convert a Hugging Face LLaMA/GPT-2/BERT/RoBERTa/T5/BART folder into a run folder"),
    "export hf": ("lmlab.interop.commands:export_hf", "write a run's model as a Hugging Face folder"),
    "export gguf": ("lmlab.interop.commands:export_gguf", "write a LLaMA-family or GPT-2 run as one GGUF file (f32, f16, q8_0) for llama.cpp, with its tokenizer and chat template"),
    "import peft": ("lmlab.interop.commands:import_peft", "convert a PEFT LoRA adapter (LLaMA/GPT-2) into an lmlab adapter run"),
    "export peft": ("lmlab.interop.commands:export_peft", "write an adapter run's LoRA as a PEFT adapter folder"),
    "seq2seq train": ("lmlab.seq2seq.commands:train", "train RNNsearch (Bahdanau) or the Transformer (--arch transformer) on a synthetic task"),
    "seq2seq eval": ("lmlab.seq2seq.commands:evaluate", "exact-match accuracy of a seq2seq run on its held-out test set"),
    "seq2seq translate": ("lmlab.seq2seq.commands:translate", "translate one input with a trained seq2seq run"),
    "word2vec train": ("lmlab.word2vec.commands:train", "train skip-gram/CBOW word vectors (word2vec text format)"),
    "word2vec eval": ("lmlab.word2vec.commands:evaluate", "word-analogy accuracy and word-similarity correlation of vectors"),
    "word2vec neighbors": ("lmlab.word2vec.commands:neighbors", "nearest neighbours of a word by cosine similarity"),
    "ngram train": ("lmlab.ngram.commands:train", "estimate an n-gram LM (mle ... modified Kneser-Ney) and write ARPA"),
    "ngram eval": ("lmlab.ngram.commands:evaluate", "perplexity, OOVs and bits per byte of an ARPA model on a text"),
    "ngram generate": ("lmlab.ngram.commands:generate", "sample sentences from an ARPA n-gram model"),
    "embed": ("lmlab.embed.commands:embed", "contextual word embeddings (ELMo) or sentence embeddings (BERT/RoBERTa, MiniLM)"),
    "lineage": ("lmlab.lineage.commands:lineage", "train n-gram, NPLM, LSTM, GPT-2 and LLaMA on one corpus and budget; compare"),
    "sft": ("lmlab.align.commands:sft", "supervised fine-tuning of a decoder on conversations (chat template, assistant-only loss)"),
    "serve": ("lmlab.serve.commands:serve", "serve a decoder over an OpenAI-compatible HTTP API (completions, chat, streaming, logprobs) with continuous batching"),
    "chat": ("lmlab.align.commands:chat", "chat with a fine-tuned model in the terminal (chat template, streaming, /reset, /system, /quit)"),
    "best-of-n": ("lmlab.align.commands:best_of_n", "sample n responses, keep the reward model's best: mean score and analytic KL per n"),
    "rejection-sampling": ("lmlab.align.commands:rejection_sampling", "rejection-sampling fine-tuning: keep the best of k samples per prompt by a reward model, SFT on them"),
    "align pairs": ("lmlab.align.commands:align_pairs", "sample two responses per prompt from a policy and label them with a reward model (on-policy DPO data)"),
    "align frontier": ("lmlab.align.commands:align_frontier", "reward vs KL of aligned policies and best-of-n on held-out prompts: table, plot, samples"),
    "reward train": ("lmlab.align.commands:reward_train", "train a reward model (scalar head, Bradley-Terry loss) on preference pairs or human ratings"),
    "reward score": ("lmlab.align.commands:reward_score", "score texts with a reward model, or its pairwise accuracy on preference pairs"),
    "dpo": ("lmlab.align.commands:dpo", "direct preference optimisation (DPO, IPO, conservative, length-normalised) of a policy on preference pairs"),
    "rlhf": ("lmlab.align.commands:rlhf", "RLHF: PPO (value model, KL-penalised reward, GAE) or GRPO (group-relative, verifiable rewards) on a policy"),
    "cai revise": ("lmlab.align.commands:cai_revise", "Constitutional AI, SL stage: the model critiques and revises its own responses under principles; writes SFT data"),
    "cai label": ("lmlab.align.commands:cai_label", "Constitutional AI, RL stage: a feedback model picks the better of two responses under a principle (AI preference pairs)"),
    "finetune": ("lmlab.adapt.commands:finetune", "fine-tune a pretrained model: classifier/regressor (head, full, lora, houlsby, pfeiffer, prefix, prompt) or the LM on a corpus's text"),
    "predict": ("lmlab.adapt.commands:predict", "label (or score) the texts of a file with a fine-tuned classifier; metrics when labelled"),
    "scaling plan": ("lmlab.scaling.commands:plan", "compute-optimal model size and tokens for a budget (Chinchilla, Kaplan)"),
    "scaling fit": ("lmlab.scaling.commands:fit", "fit scaling laws (Chinchilla approaches 1-3, Kaplan) to a table of runs"),
    "scaling flops": ("lmlab.scaling.commands:flops", "parameters, FLOPs per token (6N, Kaplan, Chinchilla, PaLM) and MFU of a model"),
    "kv-cache": ("lmlab.scaling.commands:kv_cache", "KV-cache elements and bytes per token and in total: MHA, GQA, MQA, MLA"),
    "scaling sweep": ("lmlab.scaling.commands:sweep", "train an IsoFLOP grid of model sizes x compute budgets into SWEEP/runs.csv"),
    "ulmfit": ("lmlab.adapt.commands:ulmfit", "ULMFiT's stages 2 and 3 from a general LM: LM fine-tuning (discriminative lr, STLR), classifier with gradual unfreezing; ablation switches"),
    "transfer baseline": ("lmlab.adapt.commands:transfer_baseline", "held-out accuracy of a bag-of-n-grams, averaged word2vec or ELMo-features logistic regression on labelled data"),
    "scaling emergence": ("lmlab.scaling.emergence:emergence", "train a model family on addition; exact match vs log-likelihood against size"),
    "icl": ("lmlab.prompting.commands:icl", "in-context learning: k-shot accuracy on a task (label choice, raw and calibrated, or exact match of a generation)"),
    "icl emergence": ("lmlab.prompting.commands:icl_emergence", "train models of several sizes on in-context lookup; k-shot accuracy by size and shots, induction heads, plot"),
    "icl induction": ("lmlab.prompting.commands:icl_induction", "induction-head signature of a decoder: loss drop on repeated random tokens, prefix-matching score per head"),
    "hallucination world": ("lmlab.hallucination.commands:world", "write a generated world of facts (fictional people seen often, rarely, never) as training text and prepared data"),
    "hallucination eval": ("lmlab.hallucination.commands:evaluate", "hallucination rate by entity frequency (closed- and open-book) and detectors' AUROC of a model trained on a world"),
    "hallucination run": ("lmlab.hallucination.commands:run", "the hallucination experiment: world, base and 'unknown'-trained models, rates, detectors, retrieval"),
    "cot compare": ("lmlab.prompting.commands:cot_compare", "train direct and scratchpad arithmetic models at equal compute; accuracy by digits, longer than seen included"),
    "cot eval": ("lmlab.prompting.commands:cot_eval", "greedy against self-consistency (majority of K sampled chains) on a cot run's held-out problems"),
    "cot plot": ("lmlab.prompting.commands:cot_plot", "draw cot compare results side by side (accuracy by digits, direct vs scratchpad)"),
    "tools data": ("lmlab.prompting.commands:tools_data", "write tool-use data made by code: big-number arithmetic via a calculator, Shakespeare questions via BM25 search"),
    "tools eval": ("lmlab.prompting.commands:tools_eval", "accuracy with and without tools (the model's calls run in a loop) per task, on held-out questions"),
    "tools ask": ("lmlab.prompting.commands:tools_ask", "ask one question with tools and print each turn, tool result and the answer"),
}


def _load(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _print_overview(prefix: str = "") -> None:
    """Print the commands (those under ``prefix`` if given)."""
    words = [w for w in COMMANDS if w.startswith(prefix)]
    width = max(len(w) for w in words) + 2
    title = f"lmlab {prefix}".strip()
    print(f"usage: {title} <command> [options]   ('{title} <command> --help' for its options)\n")
    print("lmlab, a language-model lab: train, compare and evaluate language models, n-grams to LLaMA.\n")
    print("commands:")
    for w in words:
        print(f"  {w:<{width}}{COMMANDS[w][1]}")
    print("\n--debug (anywhere on the command line, or LMLAB_DEBUG=1) prints the traceback of an error")


def _match(argv: list[str]) -> tuple[str | None, list[str]]:
    """Find the longest command name that prefixes argv; return it and the rest."""
    for n in range(min(3, len(argv)), 0, -1):
        words = " ".join(argv[:n])
        if words in COMMANDS:
            return words, argv[n:]
    return None, argv


def _debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """Take ``--debug`` out of ``argv`` wherever it stands (before a ``--``); also on with LMLAB_DEBUG=1."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    rest = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return debug or os.environ.get("LMLAB_DEBUG", "") not in ("", "0"), rest


def _os_error_line(e: OSError) -> str:
    """One line for an OSError: what failed, on which file, and what to do."""
    where = f" ({e.filename})" if e.filename else ""
    what = e.strerror or str(e) or type(e).__name__
    if e.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free disk space or write elsewhere, then run again"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}{where}; check the path and its permissions, or write elsewhere"
    return f"{type(e).__name__}: {what}{where}"


def _one_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """Run the lmlab CLI on ``argv``; return the process exit status.

    Errors reach the user as one line on stderr: ``error: ...`` with status 2 for an
    :class:`LmlabError` (bad input, named with its fix), status 1 for an OSError (disk full,
    permission denied) or an unexpected exception; Ctrl-C gives 130. ``--debug`` anywhere on
    the command line (or LMLAB_DEBUG=1) also prints the traceback.
    """
    debug, argv = _debug_requested(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_overview()
        return 0
    if argv[0] in ("-V", "--version"):
        from lmlab import __version__

        print(f"lmlab {__version__}")
        return 0
    name, rest = _match(argv)
    if name is None:
        group = argv[0]
        if any(w.startswith(group + " ") for w in COMMANDS):
            if len(argv) == 1 or argv[1] in ("-h", "--help"):
                _print_overview(group + " ")
                return 0
            print(f"error: unknown command 'lmlab {' '.join(argv[:2])}'; "
                  f"see 'lmlab {group} --help'", file=sys.stderr)
            return 2
        print(f"error: unknown command {argv[0]!r}; see 'lmlab --help'", file=sys.stderr)
        return 2
    error: BaseException
    try:
        return _run(name, rest)
    except LmlabError as e:
        error, code, line = e, 2, f"error: {e}"
    except (KeyboardInterrupt, Terminated) as e:
        error, code, line = e, 130, "interrupted"
    except BrokenPipeError:
        # the reader of stdout went away (lmlab ... | head): nothing more to say to it
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        error, code, line = e, 1, f"error: {_os_error_line(e)}"
    except Exception as e:
        error, code, line = e, 1, f"error: {type(e).__name__}: {_one_line(str(e))}"
        if not debug:
            line += " (run again with --debug for the traceback)"
    if debug and code != 130:
        traceback.print_exception(error)
    print(line, file=sys.stderr)
    return code


def _run(name: str, rest: list[str]) -> int:
    """Parse the options of command ``name`` and run it; return its exit status."""
    func = _load(COMMANDS[name][0])
    first = next(iter(inspect.signature(func).parameters))
    cfg_cls = typing.get_type_hints(func)[first]
    more = [w for w in COMMANDS if w.startswith(name + " ")]  # `icl` is also `icl emergence`'s group
    also = "related commands: " + ", ".join(f"'lmlab {w}'" for w in more) + "\n" if more else ""
    parser = argparse.ArgumentParser(
        prog=f"lmlab {name}",
        description=inspect.getdoc(func),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=also + "--debug (anywhere on the command line) prints the traceback of an error",
    )
    add_config_arguments(parser, cfg_cls)
    ns = parser.parse_args(rest)
    cfg = parse_config(cfg_cls, ns)
    if ns.print_config:
        print(to_yaml(cfg), end="")
        return 0
    return int(func(cfg) or 0)


def entrypoint() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
