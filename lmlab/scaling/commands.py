"""CLI commands: ``lmlab scaling plan`` (allocate a budget by a published law), ``lmlab scaling fit``
(fit scaling laws to a table of runs), ``lmlab scaling flops`` (parameters, FLOPs per token and MFU of a
model), ``lmlab scaling sweep`` (train an IsoFLOP grid of models) and ``lmlab kv-cache`` (the KV-cache
ledger of a model and of the other attention kinds at its d_model)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmlab.config import arg, save_config
from lmlab.console import human, short, si
from lmlab.errors import LmlabError
from lmlab.scaling.sweep import SweepConfig

LawName = Literal["hoffmann", "hoffmann-exact", "epoch", "kaplan", "all"]


@dataclass
class PlanConfig:
    compute: float | None = arg(None, "training budget in FLOPs, e.g. 5.76e23 (or give --gpu-hours)")
    gpu_hours: float | None = arg(None, "budget as accelerator-hours summed over devices; "
                                        "needs --flops-per-s")
    flops_per_s: float | None = arg(None, "peak FLOP/s of one accelerator at the training precision, "
                                          "e.g. 989e12 for an H100 SXM in dense bf16")
    mfu: float = arg(0.4, "model FLOPs utilisation: the share of peak that training achieves")
    law: LawName = arg("epoch", "hoffmann (Chinchilla, as printed), hoffmann-exact (unrounded), "
                                "epoch (Besiroglu et al. 2024 refit), kaplan, or all")
    json: bool = arg(False, "print the result as one JSON object")


def plan(cfg: PlanConfig) -> None:
    """Split a training budget between model size and tokens by a published scaling law.

    Prints the compute-optimal parameter count N_opt, training tokens D_opt, tokens per
    parameter and the predicted loss. Chinchilla laws (hoffmann, hoffmann-exact, epoch)
    minimise L = E + A/N^alpha + B/D^beta under C = 6ND in closed form; kaplan uses
    Kaplan et al.'s N_opt = 1.3e9 C^0.73, D_opt = 2e10 C^0.27 (C in PF-days). Losses are
    nats/token on each paper's own data, so compare allocations, not losses, with your runs.

    Examples:
      lmlab scaling plan --compute 5.76e23 --law hoffmann-exact
      lmlab scaling plan --gpu-hours 1000 --flops-per-s 989e12 --mfu 0.4 --law all --json
    """
    from lmlab.scaling.laws import LAWS, PF_DAY_FLOPS, compute_from_gpu_hours
    from lmlab.scaling.laws import plan as allocate

    inputs: dict[str, float] = {}
    if cfg.compute is not None and cfg.gpu_hours is not None:
        raise LmlabError("give the budget once: either --compute FLOPS or --gpu-hours with --flops-per-s")
    if cfg.gpu_hours is not None:
        if cfg.flops_per_s is None:
            raise LmlabError("--gpu-hours needs --flops-per-s (peak FLOP/s of one accelerator, e.g. 989e12)")
        compute = compute_from_gpu_hours(cfg.gpu_hours, cfg.flops_per_s, cfg.mfu)
        inputs = {"gpu_hours": cfg.gpu_hours, "flops_per_s": cfg.flops_per_s, "mfu": cfg.mfu}
    elif cfg.compute is not None:
        compute = cfg.compute
    else:
        raise LmlabError("no budget given; pass --compute FLOPS (e.g. 5.76e23) "
                         "or --gpu-hours H --flops-per-s F")
    names = list(LAWS) if cfg.law == "all" else [cfg.law]
    plans = [allocate(compute, name) for name in names]
    if cfg.json:
        print(json.dumps({"compute_flops": compute, "pf_days": compute / PF_DAY_FLOPS, "inputs": inputs,
                          "plans": [p.as_dict() for p in plans]}))
        return
    head = f"budget  {compute:.3g} FLOPs ({compute / PF_DAY_FLOPS:,.4g} PF-days)"
    if inputs:
        head += f" = {cfg.gpu_hours:g} GPU-hours x {cfg.flops_per_s:.3g} FLOP/s x MFU {cfg.mfu:g}"
    print(head)
    print(f"  {'law':<16}{'N_opt':>9}{'D_opt':>9}{'tokens/param':>14}{'loss':>8}")
    for p in plans:
        print(f"  {p.law:<16}{human(p.n_params):>9}{human(p.n_tokens):>9}{p.tokens_per_param:>14.1f}"
              f"{p.loss:>8.3f}")
    print("loss: nats/token on the law's own data (MassiveText; WebText2 for kaplan), not on yours")
    if "kaplan" in names:
        print("kaplan: N counts non-embedding parameters; its Table 6 fit has 6 N D != C "
              "(it is stated for C_min at small batch)")


@dataclass
class FitConfig:
    source: Path | None = arg(None, "a CSV with columns N,D,loss[,C] or a sweep folder holding runs.csv",
                              positional=True)
    approach: str = arg("3", "1 (loss-vs-compute envelope), 2 (IsoFLOP parabolas), 3 (parametric "
                             "L = E + A/N^alpha + B/D^beta), or kaplan (L(N), L(D), L(N,D) power laws)")
    out: Path | None = arg(None, "folder for fit.json, config.yaml and the plots (default: "
                                 "SWEEP_DIR/fit-APPROACH, or CSV_DIR/CSV_NAME-fit-APPROACH)")
    n_column: str = arg("N", "CSV column to use as N, e.g. a non-embedding parameter count for Kaplan fits")
    loss_column: str = arg("loss", "CSV column to use as the loss (nats/token)")
    bootstrap: int = arg(200, "approach 3: bootstrap resamples for the 95%% intervals (0: none)")
    grid: Literal["coarse", "paper"] = arg("coarse", "approach 3 starting points: coarse (128) or paper "
                                                     "(Hoffmann et al.'s 4500, about 35x slower)")
    group_tol: float = arg(0.05, "approach 2: runs within this many decades of compute "
                                 "form one IsoFLOP group")
    seed: int = arg(0, "bootstrap random seed")
    plots: bool = arg(True, "write PNG plots")
    json: bool = arg(False, "print the result as one JSON object")


def default_fit_out(source: Path, approach: str) -> Path:
    """Default output folder: SWEEP_DIR/fit-APPROACH, or CSV_DIR/<csv stem>-fit-APPROACH."""
    if source.is_dir():
        return source / f"fit-{approach}"
    return source.parent / f"{source.stem}-fit-{approach}"



def fit(cfg: FitConfig) -> None:
    """Fit scaling laws to a table of training runs and plot them.

    SOURCE is a CSV with columns N (parameters), D (training tokens), loss (nats/token)
    and optionally C (training FLOPs, default 6ND), or a sweep folder holding runs.csv.
    Approaches follow Hoffmann et al. 2022: 1 fits N_opt, D_opt against C on the lower
    envelope of loss vs compute; 2 fits a parabola in log N per compute budget and power
    laws through the valleys; 3 fits L = E + A/N^alpha + B/D^beta (Huber loss on log loss,
    L-BFGS from a grid, bootstrap intervals). kaplan fits Kaplan et al.'s L(N), L(D) and
    L(N, D). Prints the constants with 95% intervals and writes OUT/fit.json, the plots,
    OUT/report.md (runs, constants, allocation, plots) and OUT/config.yaml. A fit that does
    not converge is an error, not a result.

    Example:
      lmlab scaling fit runs/sweep --approach 2
    """
    from lmlab.fileio import write_json
    from lmlab.scaling.fit import optimum_at, read_runs, run_fit
    from lmlab.scaling.report import TITLES, write_fit_report

    if cfg.source is None:
        raise LmlabError("give SOURCE: a CSV with columns N,D,loss[,C] or a sweep folder holding runs.csv")
    approach = str(cfg.approach).strip().lower()
    if approach not in ("1", "2", "3", "kaplan"):
        raise LmlabError(f"--approach {cfg.approach!r} is not one of 1, 2, 3, kaplan")
    if cfg.bootstrap < 0:
        raise LmlabError("--bootstrap must be 0 or more")
    if not (cfg.group_tol > 0):
        raise LmlabError("--group-tol must be positive (decades of compute, e.g. 0.05)")
    table = read_runs(cfg.source, n_column=cfg.n_column, loss_column=cfg.loss_column)
    result = run_fit(table, approach, tol_decades=cfg.group_tol, grid=cfg.grid, bootstrap=cfg.bootstrap,
                     seed=cfg.seed, progress=not cfg.json)
    c_max = float(table.C.max())
    optimum = optimum_at(result, c_max)
    out = cfg.out or default_fit_out(Path(cfg.source), approach)
    plots = []
    if cfg.plots:
        from lmlab.scaling.plots import write_plots

        plots = [str(p) for p in write_plots(result, out, cfg.group_tol)]
    record = result.as_dict() | {"source": table.source, "optimum_at_max_compute": optimum, "plots": plots}
    write_json(out / "fit.json", record)
    save_config(cfg, out / "config.yaml")
    options = {"N column": cfg.n_column, "loss column": cfg.loss_column}
    if approach == "2":
        options["IsoFLOP group width (decades of compute)"] = cfg.group_tol
    if approach == "3":
        options |= {"starting grid": cfg.grid, "bootstrap resamples": cfg.bootstrap, "seed": cfg.seed}
    write_fit_report(out, result, table, optimum, [Path(p) for p in plots], options)
    if cfg.json:
        print(json.dumps(record | {"out": str(out)}))
        return
    print(f"{TITLES[approach]} on {len(table)} runs from {table.source}")
    print(f"  {result.formula}")
    width = max(len(k) for k in result.params)
    for name, est in result.params.items():
        has_ci = est.lo is not None and math.isfinite(est.lo)
        ci = f"   95% CI [{short(est.lo)}, {short(est.hi)}]" if has_ci else ""
        print(f"  {name:<{width}}  {short(est.value):>11}{ci}")
    if optimum:
        line = (f"at the largest budget here, C = {c_max:.3g}: N_opt = {human(optimum['n_params'])}, "
                f"D_opt = {human(optimum['n_tokens'])} ({optimum['tokens_per_param']:.1f} tokens/param)")
        print(line + (f", loss {optimum['loss']:.4g}" if "loss" in optimum else ""))
    for note in result.notes:
        print(f"  note: {note}")
    print(f"wrote {out / 'fit.json'}, {out / 'report.md'}"
          + (f" and {len(plots)} plots: {', '.join(Path(p).name for p in plots)}" if plots else ""))


@dataclass
class FlopsConfig:
    model: str | None = arg(None, "a decoder preset (gpt2-124m, llama-8b, ...; all: lmlab.models.PRESETS), "
                                  "or a run folder / model.safetensors")
    seq_len: int | None = arg(None, "context length T the FLOPs are counted at (default: the model's "
                                    "block size)")
    model_args: list[str] = arg([], "model config overrides as KEY=VALUE (JSON or YAML values), "
                                    "e.g. vocab_size=32000,n_kv_heads=2; a comma splits only before "
                                    "the next KEY=, so values may hold commas", key_values=True)
    tokens_per_s: float | None = arg(None, "measured training throughput in tokens/s (over all devices); "
                                           "with --peak-flops gives the MFU")
    peak_flops: str | None = arg(None, "peak FLOP/s of one device: a number (e.g. 989e12) or a name: "
                                       "h100-sxm-bf16, h100-pcie-bf16, a100-bf16, l4-bf16, v100-fp16, "
                                       "rtx4090-bf16, mi300x-bf16, tpu-v5p-bf16, ... "
                                       "(lmlab.device.PEAK_FLOPS)")
    devices: int = arg(1, "devices the tokens/s were measured on; the peak is multiplied by this")
    json: bool = arg(False, "print the figures as one JSON object")


_METHOD_TITLES = {"6N": "6N (Kaplan N)", "kaplan": "Kaplan 2020", "chinchilla": "Chinchilla 2022",
                  "palm": "PaLM 2022"}



def _decoder_config(spec: str, model_args: list[str], what: str = "these counts (Kaplan, Chinchilla, PaLM)",
                    other: str = "its training FLOPs/token (6 x matmul parameters) and MFU are in its "
                                 "metrics.jsonl from 'lmlab pretrain'"):
    """Return ``(DecoderConfig, label)`` for a preset name or a run folder / model file, with overrides;
    ``what`` and ``other`` word the refusal of a model that is not a Transformer decoder."""
    from lmlab.models.decoder import DecoderConfig
    from lmlab.models.io import ARCH, read_arch
    from lmlab.models.presets import PRESETS
    from lmlab.models.registry import FAMILIES, get_preset, preset_names
    from lmlab.train.pretrain import parse_model_args

    overrides = parse_model_args(model_args)
    if spec in PRESETS:
        return get_preset(spec, **overrides), spec
    path = Path(spec)
    if path.exists():
        arch, values = read_arch(path)
        if arch in FAMILIES and arch != ARCH:
            raise LmlabError(f"{path} holds a {arch} model; {what} are for Transformer decoders"
                             + (f"; {other}" if other else ""))
        if arch != ARCH or values is None:
            raise LmlabError(f"{path} has no lmlab decoder config in its metadata; for a Hugging Face "
                             "checkpoint run 'lmlab import hf --src DIR --out RUN' first")
        return DecoderConfig.from_dict({**values, **overrides}), str(path)
    if spec in preset_names():
        raise LmlabError(f"{spec!r} is a pre-Transformer preset; {what} are for decoder presets: "
                         f"{', '.join(PRESETS)}")
    raise LmlabError(f"--model {spec!r} is neither a decoder preset ({', '.join(PRESETS)}) nor an "
                     "existing run folder or model.safetensors")


def flops(cfg: FlopsConfig) -> None:
    """Count a decoder's parameters and training FLOPs per token, and its MFU at a measured speed.

    MODEL is a preset or a run folder. Prints the total and non-embedding (Kaplan's N)
    parameter counts and the training FLOPs per token and per sequence at --seq-len by
    four counts: 6N; Kaplan et al. 2020 Table 1 (2N + 2 n_layer n_ctx d_attn forward, x3
    for training); Chinchilla (Hoffmann et al. 2022, Appendix F: embeddings, attention
    including logits and softmax, dense block, output logits; backward = 2 x forward);
    PaLM (6N' + 12 n_layer n_head head_dim T, the count 'lmlab pretrain' uses for MFU),
    each with its ratio to 6N. GQA: the QKV projection counts n_head query and n_kv_heads
    key/value heads; attention itself keeps n_head. With --tokens-per-s and --peak-flops,
    MFU = FLOPs/token x tokens/s / (peak x devices) by each count.

    Examples:
      lmlab scaling flops --model gpt2-124m --seq-len 1024
      lmlab scaling flops --model llama-8b --seq-len 8192 --tokens-per-s 3500 --peak-flops h100-sxm-bf16
      lmlab scaling flops --model runs/tiny --json
    """
    from lmlab.scaling.flops import METHODS, flop_counts, resolve_peak_flops
    from lmlab.train.mfu import mfu

    if cfg.model is None:
        raise LmlabError("give --model: a decoder preset (e.g. gpt2-124m, llama-8b) or a run folder")
    mc, label = _decoder_config(cfg.model, cfg.model_args)
    seq = mc.block_size if cfg.seq_len is None else cfg.seq_len
    if seq < 1:
        raise LmlabError(f"--seq-len must be a positive number of tokens, got {seq}")
    if seq > mc.block_size:
        raise LmlabError(f"--seq-len {seq} exceeds the model's context of {mc.block_size} tokens; use "
                         f"--seq-len {mc.block_size} or less, or --model-args block_size={seq}")
    if cfg.devices < 1:
        raise LmlabError(f"--devices must be at least 1, got {cfg.devices}")
    if cfg.tokens_per_s is not None and not (cfg.tokens_per_s > 0 and math.isfinite(cfg.tokens_per_s)):
        raise LmlabError(f"--tokens-per-s must be a positive number, got {cfg.tokens_per_s}")
    counts = flop_counts(mc, seq)
    record = {"model": label, "config": mc.to_dict()} | counts.as_dict()
    throughput: dict = {}
    peak = 0.0
    if cfg.tokens_per_s is not None or cfg.peak_flops is not None:
        throughput = {"tokens_per_s": cfg.tokens_per_s, "devices": cfg.devices}
        if cfg.tokens_per_s is not None:
            throughput["achieved_flops_per_s"] = {m: counts.counts[m].train_per_token * cfg.tokens_per_s
                                                  for m in METHODS}
        if cfg.peak_flops is not None:
            one, peak_label = resolve_peak_flops(cfg.peak_flops)
            peak = one * cfg.devices
            throughput |= {"peak_flops_per_device": one, "peak_name": peak_label, "peak_flops": peak,
                           "tokens_per_s_at_peak": {m: peak / counts.counts[m].train_per_token
                                                    for m in METHODS}}
            if cfg.tokens_per_s is not None:
                throughput["mfu"] = {m: mfu(counts.counts[m].train_per_token, cfg.tokens_per_s, peak)
                                     for m in METHODS}
        record["throughput"] = throughput
    if cfg.json:
        print(json.dumps(record))
        return
    p = counts.params
    kv = f"{mc.n_kv_heads} KV heads" if mc.n_kv_heads != mc.n_head else "MHA"
    print(f"{label}: {mc.n_layer} layers, d_model {mc.d_model}, {mc.n_head} heads x {mc.head_dim} ({kv}), "
          f"d_ff {mc.d_ff} {mc.mlp}, {mc.norm}, {mc.pos} positions, vocab {mc.vocab_size}, "
          f"{'tied' if mc.tie_embeddings else 'untied'} head")
    print(f"parameters: {human(p.total)} total ({p.total:,}), {human(p.non_embedding)} non-embedding "
          f"(Kaplan's N, {p.non_embedding:,}), {human(p.embedding)} embedding")
    print(f"FLOPs at seq_len {seq} (training = forward + backward = 3 x forward):")
    print(f"  {'count':<17}{'fwd/token':>11}{'train/token':>13}{'train/seq':>11}{'vs 6N':>8}"
          + (f"{'MFU':>8}" if "mfu" in throughput else ""))
    for m, c in counts.counts.items():
        line = (f"  {_METHOD_TITLES[m]:<17}{si(c.forward_per_token):>11}{si(c.train_per_token):>13}"
                f"{si(c.train_per_sequence):>11}{counts.ratio_to_6n(m):>8.3f}")
        if "mfu" in throughput:
            line += f"{throughput['mfu'][m]:>8.1%}"
        print(line)
    t = counts.chinchilla_forward_terms
    fwd = counts.chinchilla.forward_per_sequence
    attention = mc.n_layer * sum(v for k, v in t.items() if k.startswith("attention"))
    parts = {"embeddings": t["embeddings"], "attention": attention, "dense": mc.n_layer * t["dense"],
             "logits": t["logits"]}
    print("Chinchilla forward FLOPs per sequence: "
          + ", ".join(f"{k} {si(v)} ({v / fwd:.0%})" for k, v in parts.items()))
    if cfg.tokens_per_s is not None:
        achieved = throughput["achieved_flops_per_s"]
        print(f"at {cfg.tokens_per_s:,.6g} tokens/s: {si(achieved['palm'], 'FLOP/s')} by PaLM's count, "
              f"{si(achieved['chinchilla'], 'FLOP/s')} by Chinchilla's")
    if cfg.peak_flops is not None:
        dev = f" x {cfg.devices} devices" if cfg.devices > 1 else ""
        print(f"peak {si(throughput['peak_flops_per_device'], 'FLOP/s')} ({throughput['peak_name']}){dev}: "
              f"{throughput['tokens_per_s_at_peak']['palm']:,.0f} tokens/s at 100% MFU by PaLM's count")



@dataclass
class KVCacheConfig:
    model: str | None = arg(None, "a decoder preset (llama2-7b, llama-8b, gpt2-124m, ...; all: "
                                  "lmlab.models.PRESETS), or a run folder / model.safetensors")
    context: int | None = arg(None, "tokens of context the cache holds per sequence, e.g. 32768")
    batch: int = arg(1, "sequences decoded at once")
    dtype: Literal["fp32", "bf16", "fp16"] = arg("bf16", "element type of the cache: fp32 (4 bytes), "
                                                        "bf16 or fp16 (2 bytes)")
    gqa_groups: int | None = arg(None, "KV heads of the GQA comparison (default: the model's own when it "
                                       "is GQA, else the largest divisor of n_head up to 8)")
    model_args: list[str] = arg([], "model config overrides as KEY=VALUE (JSON or YAML values), e.g. "
                                    "block_size=32768,n_kv_heads=8", key_values=True)
    measure: bool = arg(False, "also allocate each kind's real cache (model.new_kv_cache) and report its "
                               "bytes; needs as much free memory as the largest cache")
    out: Path | None = arg(None, "folder to write kv_cache.json and the resolved config.yaml to")
    json: bool = arg(False, "print the ledger as one JSON object")


def kv_cache(cfg: KVCacheConfig) -> int:
    """The KV-cache ledger: elements and bytes each attention kind caches per token and in total.

    MODEL is a decoder preset or a run folder. For its own attention and for the other
    kinds at equal d_model (same layers l, heads n_h and head width d_h), prints the
    elements cached per token by DeepSeek-V2's Table 1 (MHA 2 n_h d_h l, GQA 2 n_g d_h l,
    MQA 2 d_h l, MLA (d_c + d_h^R) l), the bytes per token and for the whole cache of
    --batch sequences of --context tokens, and each kind's size relative to MHA. The GQA
    comparison uses --gqa-groups KV heads; the MLA one DeepSeek-V2's d_c = 4 d_h and
    d_h^R = d_h / 2 (an MLA model keeps its own). With --measure each kind's real cache is
    built by the model's new_kv_cache on the CPU (weights stay on the meta device) and its
    bytes are reported beside the formula's; a mismatch exits with status 1.

    Examples:
      lmlab kv-cache --model llama2-7b --context 4096
      lmlab kv-cache --model llama2-7b --model-args block_size=32768 --context 32768 --json
      lmlab kv-cache --model llama-tiny --context 256 --batch 8 --dtype fp32 --measure
    """
    from lmlab.console import human_bytes
    from lmlab.fileio import write_json
    from lmlab.scaling.kv_ledger import kv_ledger, measure_ledger

    if cfg.model is None:
        raise LmlabError("give --model: a decoder preset (e.g. llama2-7b, gpt2-124m) or a run folder")
    if cfg.context is None:
        raise LmlabError("give --context: the tokens each sequence's cache holds, e.g. --context 4096")
    mc, label = _decoder_config(cfg.model, cfg.model_args, "the KV-cache formulas", "")
    ledger = kv_ledger(mc, cfg.context, cfg.batch, cfg.dtype, cfg.gqa_groups)
    if cfg.measure:
        ledger = measure_ledger(ledger)
    record = {"model": label, "config": mc.to_dict()} | ledger.as_dict()
    if cfg.out is not None:
        write_json(cfg.out / "kv_cache.json", record)
        save_config(cfg, cfg.out / "config.yaml")
    mismatch = [r.kind for r in ledger.rows
                if r.measured_bytes is not None and r.measured_bytes != r.bytes_total]
    if cfg.json:
        print(json.dumps(record))
        return 1 if mismatch else 0
    own = ledger.own
    print(f"{label}: {mc.n_layer} layers, d_model {mc.d_model}, {mc.n_head} heads x {mc.head_dim}, "
          f"attention {own.kind.upper()}; {cfg.batch} x {cfg.context:,} tokens in {cfg.dtype} "
          f"({own.bytes_per_element} bytes/element)")
    print("KV cache by attention kind at equal d_model (DeepSeek-V2 Table 1: elements per token):")
    head = (f"  {'kind':<11}{'formula':<17}{'values':<22}{'elements/token':>15}{'bytes/token':>13}"
            f"{'total':>11}{'vs MHA':>8}")
    print(head + (f"{'measured':>11}" if ledger.measured else ""))
    for r in ledger.rows:
        name = r.kind.upper() + (" (own)" if r.own else "")
        line = (f"  {name:<11}{r.formula:<17}{r.substituted:<22}{r.elements_per_token:>15,}"
                f"{human_bytes(r.bytes_per_token):>13}{human_bytes(r.bytes_total):>11}"
                f"{ledger.ratio_to_mha(r):>8.3f}")
        if r.measured_bytes is not None:
            line += f"{human_bytes(r.measured_bytes):>11}" + ("" if r.measured_bytes == r.bytes_total
                                                             else "  MISMATCH")
        print(line)
    notes = [f"n_g={r.terms['n_g']}" for r in ledger.rows if r.kind == "gqa" and not r.own]
    notes += [f"MLA d_c={r.terms['d_c']}, d_h^R={r.terms['d_h^R']} (DeepSeek-V2: 4 d_h, d_h/2)"
              for r in ledger.rows if r.kind == "mla" and not r.own]
    if notes:
        print("comparisons: " + "; ".join(notes))
    if ledger.measured:
        verdict = (f"; MISMATCH for {', '.join(mismatch)}" if mismatch
                   else ", equal to the formula for every kind")
        print(f"measured: the bytes of model.new_kv_cache(batch, context, dtype) of each kind{verdict}")
    if cfg.out is not None:
        print(f"wrote {cfg.out / 'kv_cache.json'} and {cfg.out / 'config.yaml'}")
    return 1 if mismatch else 0




def sweep(cfg: SweepConfig) -> int:
    """Train an IsoFLOP grid: every model size for every compute budget, one table of N, D, C, loss.

    The models are one family generated from d_model (n_head = d_model / head-dim,
    n_layer = round(d_model / aspect)). Each budget C gives each size D = C / f tokens,
    f its training FLOPs per token by --flops (Chinchilla's count, attention included,
    by default), rounded up to whole steps; each run is 'lmlab pretrain' with its cosine
    schedule fitted to its length, in SWEEP/runs/NAME. It is then scored on the same
    --eval-tokens validation windows as every other run and a row (name, N = total
    parameters, D = trained tokens, C = f D, loss = validation nats/token, budget,
    N_nonembedding, flops_per_token, C_6ND, steps, seconds, val_bpb, ...) is appended
    to SWEEP/runs.csv; when every run is done SWEEP/report.md shows the settings and the
    table. Rerunning the same command skips finished runs and resumes an interrupted one;
    new budgets or sizes extend the sweep. Pairs whose budget buys less than one step are
    skipped. Fit the table with 'lmlab scaling fit SWEEP'.

    Examples:
      lmlab scaling sweep --data data/shk --budgets 3e12,1e13 --sizes 32,48,64,96 --dry-run
      lmlab scaling sweep --data data/shk --out runs/sweep --budgets 3e12,1e13 --sizes 32,48,64,96
      lmlab scaling fit runs/sweep --approach 2
    """
    from lmlab.scaling.sweep import run_sweep

    return run_sweep(cfg)
