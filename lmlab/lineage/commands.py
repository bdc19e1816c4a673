"""``lmlab lineage``: the CLI face of :func:`lmlab.lineage.run.run_lineage` (only lmlab.cli imports it)."""

from __future__ import annotations

import json
import sys

from lmlab.errors import Terminated
from lmlab.lineage.run import PLOT, LineageConfig, run_lineage


def lineage(cfg: LineageConfig) -> int:
    """Train the lineage of language models on one corpus under one budget and compare them.

    One BPE tokenizer and one train/validation split for all. The n-gram picks its order
    and smoothing on a dev slice of the training split; NPLM, LSTM, GPT-2 and LLaMA style
    models then train under the same budget, given by exactly one of --budget-tokens N
    (the same tokens), --budget-flops F (the same training FLOPs, by each model's own
    count) or --budget SECONDS (the same wall-clock time), or by a --preset. A work budget
    fixes every model's steps and schedule, so the table is the same on any machine up to
    float noise (fp32). All are scored on the whole validation split. Writes
    OUT/results.json, OUT/lineage.png (validation bits per byte against training FLOPs),
    OUT/report.md (table, plot, samples), OUT/config.yaml, OUT/data and one run folder per
    neural model. The run is built beside OUT and swapped in when whole: a failure or
    Ctrl-C leaves an old run in OUT untouched. Examples:

      lmlab lineage --preset demo --corpus shakespeare --out runs/lineage
      lmlab lineage --budget-flops 3e13 --precision fp32 --out runs/lineage
    """
    log = sys.stderr if cfg.json else sys.stdout
    try:
        result = run_lineage(cfg, log=lambda line: print(line, file=log, flush=True))
    except (KeyboardInterrupt, Terminated):
        print(f"interrupted; nothing was written to {cfg.out}", file=sys.stderr)
        return 130
    if cfg.json:
        models = [{k: v for k, v in r.items() if k != "curve"} for r in result.models]
        print(json.dumps({"settings": result.settings, "models": models}))
        return 0
    from lmlab.lineage.report import text_table

    out = result.out
    print()
    print(text_table(result.models))
    print(f"\nwrote {out}/report.md, {out}/{PLOT} and {out}/results.json "
          f"({result.total_seconds:.0f} s in all)")
    return 0
