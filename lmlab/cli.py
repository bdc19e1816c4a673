"""The ``lmlab`` command line: one subcommand per area of the lab.

Each command is a function ``run(cfg: SomeConfig)`` in its own module; its config
dataclass (the annotation of the first parameter) defines the flags, and its
docstring is the ``--help`` description. The table below maps command names to those
functions, so adding a command is one line here and nothing imports a command's
module (or torch) until that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import typing
from collections.abc import Callable

from lmlab.config import add_config_arguments, parse_config, to_yaml
from lmlab.errors import LmlabError

# command words -> ("module:function", one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "corpora": ("lmlab.data.commands:corpora", "list the built-in corpora and how to use your own"),
    "data prepare": ("lmlab.data.commands:prepare", "tokenize a corpus into train.bin/val.bin + tokenizer.json"),
    "data info": ("lmlab.data.commands:info", "show the meta and a decoded sample of prepared data"),
    "tokenizer train": ("lmlab.data.commands:tokenizer_train", "train a tokenizer on a corpus and save tokenizer.json"),
    "tokenizer encode": ("lmlab.data.commands:tokenizer_encode", "encode text to token ids with a tokenizer.json"),
    "tokenizer decode": ("lmlab.data.commands:tokenizer_decode", "decode token ids to text with a tokenizer.json"),
    "pretrain": ("lmlab.train.commands:pretrain", "pretrain a language model (GPT-2/LLaMA, NPLM, RNN/LSTM/GRU, ELMo presets)"),
    "eval": ("lmlab.evaluate.commands:evaluate", "perplexity and bits per byte of a model on prepared data"),
    "generate": ("lmlab.generate.commands:run", "generate text from a run or Hugging Face folder (streams, KV cache)"),
    "import hf": ("lmlab.interop.commands:import_hf", "convert a Hugging Face LLaMA/GPT-2 folder into a run folder"),
    "export hf": ("lmlab.interop.commands:export_hf", "write a run's model as a Hugging Face folder"),
    "seq2seq train": ("lmlab.seq2seq.commands:train", "train a Bahdanau attention encoder-decoder on a synthetic task"),
    "seq2seq eval": ("lmlab.seq2seq.commands:evaluate", "exact-match accuracy of a seq2seq run on its held-out test set"),
    "seq2seq translate": ("lmlab.seq2seq.commands:translate", "translate one input with a trained seq2seq run"),
    "word2vec train": ("lmlab.word2vec.commands:train", "train skip-gram/CBOW word vectors (word2vec text format)"),
    "word2vec eval": ("lmlab.word2vec.commands:evaluate", "word-analogy accuracy and word-similarity correlation of vectors"),
    "word2vec neighbors": ("lmlab.word2vec.commands:neighbors", "nearest neighbours of a word by cosine similarity"),
    "ngram train": ("lmlab.ngram.commands:train", "estimate an n-gram LM (mle ... modified Kneser-Ney) and write ARPA"),
    "ngram eval": ("lmlab.ngram.commands:evaluate", "perplexity, OOVs and bits per byte of an ARPA model on a text"),
    "ngram generate": ("lmlab.ngram.commands:generate", "sample sentences from an ARPA n-gram model"),
    "embed": ("lmlab.embed.commands:embed", "contextual word embeddings (layer-mixed) of a text from a trained ELMo biLM"),
    "lineage": ("lmlab.lineage.commands:lineage", "train n-gram, NPLM, LSTM, GPT-2 and LLaMA on one corpus and budget; compare"),
    "scaling plan": ("lmlab.scaling.commands:plan", "compute-optimal model size and tokens for a budget (Chinchilla, Kaplan)"),
    "scaling fit": ("lmlab.scaling.commands:fit", "fit scaling laws (Chinchilla approaches 1-3, Kaplan) to a table of runs"),
    "scaling flops": ("lmlab.scaling.commands:flops", "parameters, FLOPs per token (6N, Kaplan, Chinchilla, PaLM) and MFU of a model"),
    "scaling sweep": ("lmlab.scaling.commands:sweep", "train an IsoFLOP grid of model sizes x compute budgets into SWEEP/runs.csv"),
    "scaling emergence": ("lmlab.scaling.emergence:emergence", "train a model family on addition; exact match vs log-likelihood against size"),
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
    print("lmlab, a language-model lab: train, compare, adapt, align, evaluate and serve LMs.\n")
    print("commands:")
    for w in words:
        print(f"  {w:<{width}}{COMMANDS[w][1]}")


def _match(argv: list[str]) -> tuple[str | None, list[str]]:
    """Find the longest command name that prefixes argv; return it and the rest."""
    for n in range(min(3, len(argv)), 0, -1):
        words = " ".join(argv[:n])
        if words in COMMANDS:
            return words, argv[n:]
    return None, argv


def main(argv: list[str] | None = None) -> int:
    """Run the lmlab CLI on ``argv``; return the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
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

    func = _load(COMMANDS[name][0])
    first = next(iter(inspect.signature(func).parameters))
    cfg_cls = typing.get_type_hints(func)[first]
    parser = argparse.ArgumentParser(
        prog=f"lmlab {name}",
        description=inspect.getdoc(func),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, cfg_cls)
    ns = parser.parse_args(rest)
    try:
        cfg = parse_config(cfg_cls, ns)
        if ns.print_config:
            print(to_yaml(cfg), end="")
            return 0
        result = func(cfg)
    except LmlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def entrypoint() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
