"""CLI commands of prompting: ``lmlab cot compare`` (a scratchpad against direct answers at equal
training compute), ``lmlab cot eval`` (greedy against self-consistency) and ``lmlab cot plot``."""

from __future__ import annotations

from lmlab.prompting.cot import CompareConfig, EvalConfig, PlotConfig


def cot_compare(cfg: CompareConfig) -> int:
    """Train a direct and a scratchpad model on arithmetic at equal compute; score both by digit count.

    Both models (the --preset shape) train for the same --flops on rows of --block-size tokens
    packed with whole problems of --train-digits digits (loss on the targets only), so they take
    the same steps and the direct one sees more problems: the direct one on "123+45=168", the
    scratchpad one on "123+45=[3+5+0=08,2+4+0=06,1+0+0=01]168" (multiplication:
    "123*45=[321*54:516+0294=5355]5535", partial products and running sums written units first;
    see lmlab.prompting.scratchpad). Each answers held-out problems (never trained on) of every
    --test-digits count greedily; the score is exact match of the final answer. Writes
    OUT/results.json, results.csv, cot.png (accuracy by digits), config.yaml and the runs
    OUT/direct and OUT/scratchpad (model.safetensors, metrics.jsonl, task.json), which
    lmlab cot eval reads. Prints a table (--json: one JSON object). Returns 0.

    Examples:
      lmlab cot compare --out runs/cot-add --op add --train-digits 1-4 --test-digits 1-6 --flops 2e12
      lmlab cot compare --out runs/cot-mul --op mul --train-digits 1-2 --test-digits 1-3 --json
    """
    from lmlab.prompting.cot import run_compare

    return run_compare(cfg)


def cot_eval(cfg: EvalConfig) -> int:
    """Score a cot run by greedy decoding and by self-consistency over K sampled chains, by digit count.

    Reads a run of lmlab cot compare (OUT/direct or OUT/scratchpad) and its held-out problems
    (the same seed, so none was trained on). For each digit count it reports the accuracy of
    the greedy answer and, with --self-consistency K > 1, of the majority answer of K chains
    sampled at --temperature (Wang et al. 2023; chains without an answer do not vote, a tie goes
    to the answer sampled first), the mean accuracy of one sampled chain and the share of
    problems some chain gets right. With --out, writes results.json, config.yaml and
    cot-eval.png there. Prints a table (--json: one JSON object). Returns 0.

    Examples:
      lmlab cot eval --ckpt runs/cot-add/scratchpad --self-consistency 5 --temperature 0.7
      lmlab cot eval --ckpt runs/cot-add/direct --test-digits 5-6 --test-per-digits 500 --json
    """
    from lmlab.prompting.cot import run_eval

    return run_eval(cfg)


def cot_plot(cfg: PlotConfig) -> int:
    """Draw several lmlab cot compare results side by side (accuracy by digits, direct vs scratchpad).

    Example:
      lmlab cot plot --results runs/cot-add/results.json,runs/cot-mul/results.json --out docs/cot.png
    """
    from lmlab.prompting.cot import run_plot

    return run_plot(cfg)
