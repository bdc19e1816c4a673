"""The README's figure of GLM's blank-infilling attention mask, drawn from one real training example.

A line of Hamlet is word-tokenized (with the objectives' special tokens appended), and the
``blank-infilling`` example builder of ``lmlab pretrain`` (:mod:`lmlab.data.blanks`) blanks its
spans exactly as in training. The figure shows which key each query may attend to, with
the tokens, their position and block-position ids, and parts A and B marked.

    python benchmarks/plot_glm_mask.py [--out docs/glm-mask.png] [--seed 0] [--block-size 32]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lmlab.data.blanks import BlankInfillingExamples
from lmlab.data.collators import example_rng
from lmlab.data.masking import IGNORE
from lmlab.data.special import add_objective_tokens, find_special_ids
from lmlab.data.tokenizers import train_tokenizer
from lmlab.plotting import figure, save_png

TEXT = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles")
NAMES = {"<|mask|>": "[MASK]", "<|sop|>": "[S]", "<|eop|>": "[E]"}


def example(seed: int, block_size: int) -> tuple[dict[str, np.ndarray], list[str], list[str], int, int]:
    """Return ``(example, token strings, target strings, length of part A, length without padding)``
    of the first seed from ``seed`` on whose blanks are at least two spans (one span says less)."""
    tok = train_tokenizer("word", [TEXT], vocab_size=200, min_frequency=1)
    add_objective_tokens(tok)
    ids = find_special_ids(tok)
    tokens = np.array(tok.encode(TEXT), dtype=np.int64)
    builder = BlankInfillingExamples(ids, block_size)
    while True:
        ex = builder(tokens, 0, example_rng(seed))
        if int((ex["input_ids"] == ids.sop).sum()) >= 2:
            break
        seed += 1
    a_len = int(np.argmax(ex["labels"] != IGNORE))
    n = int((ex["input_ids"] != ids.pad).sum())
    words = [tok.id_to_token(int(i)) for i in ex["input_ids"][:n]]
    targets = [tok.id_to_token(int(i)) if i != IGNORE else "" for i in ex["labels"][:n]]
    return ex, [NAMES.get(w, w) for w in words], [NAMES.get(w, w) for w in targets], a_len, n


def main() -> None:
    """Draw the mask and save it as a PNG."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/glm-mask.png"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block-size", type=int, default=32)
    args = ap.parse_args()
    ex, words, targets, a_len, n = example(args.seed, args.block_size)
    pos, block = ex["position_ids"][:n], ex["block_position_ids"][:n]
    labels = [f"{w}  ({p},{b})" for w, p, b in zip(words, pos, block)]

    fig, (ax,) = figure(width=9.0, height=8.5)
    shade = ex["attention_mask"][:n, :n].astype(float)
    shade[a_len:, a_len:] *= 0.75  # part B's causal block in a lighter tone
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=1.15)
    ax.set_xticks(range(n), words, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.axhline(a_len - 0.5, color="black", lw=1.2)
    ax.axvline(a_len - 0.5, color="black", lw=1.2)
    for row in range(a_len, n):  # what each part B token is trained to predict
        ax.text(n - 0.2, row, f"-> {targets[row]}", fontsize=8, va="center")
    ax.text(n + 3.4, (a_len - 1) / 2, "part A: text with spans blanked", rotation=90, va="center",
            fontsize=10, weight="bold")
    ax.text(n + 3.4, (a_len + n - 1) / 2, "part B: spans", rotation=90, va="center", fontsize=10,
            weight="bold")
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query: token  (position id, block position id)")
    ax.set_title("GLM blank infilling: part A bidirectional, part B causal\n"
                 "(shaded = may attend; [S] starts a span, -> the token it predicts, [E] the span's end)",
                 fontsize=10)
    save_png(fig, args.out)
    print(f"wrote {args.out}: {n} tokens, part A {a_len}, part B {n - a_len}")


if __name__ == "__main__":
    main()
