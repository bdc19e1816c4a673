"""Attention kinds at decode time (CPU): batch-1 decoding speed and KV-cache bytes by context, and MLA
against Hugging Face's ``DeepseekV3ForCausalLM``.

``decode``: one decoder shape at equal d_model (default d=256, 8 heads of 32, 4 layers, vocabulary
4096: small, so a 32K context decodes in seconds on a laptop CPU and the cache, not the weights,
dominates the memory read per step) with each attention kind of ``lmlab kv-cache``'s ledger
(``kind_config``): MHA, GQA (``--gqa-groups``, default the ledger's), MQA, and MLA with DeepSeek-V2's
ratios (d_c = 4 d_h, d_h^R = d_h / 2), MLA decoded both ways (``Decoder.set_mla_decode``: ``naive``
up-projects the whole cached latent to keys and values at every step, ``absorbed`` attends over the
latent). At each context T the cache from ``model.new_kv_cache(1, T)`` has its first T - n positions
filled with random numbers (a step reads every cached position whatever its value; a real prefill of
32K tokens would cost minutes per kind), then n = ``--new-tokens`` greedy steps (``model(token,
kv_cache)``, argmax, the weights laid out for one-row products as generation lays them out) decode
positions T - n .. T - 1. Cache bytes are the cache's ``nbytes`` beside
the ledger's formula (they must agree).

``hf``: a tiny dense ``DeepseekV3ForCausalLM`` (the same d, heads and layers, MLA at DeepSeek-V2's
ratios, compressed queries q_lora_rank = d/2, ``first_k_dense_replace`` = layers so no MoE) with
random weights; HF saves it and lmlab imports the folder (``lmlab.interop.hf_deepseek``), so both hold
the SAME weights. Greedy generation of ``--hf-new-tokens`` from a ``--prompt-tokens`` prompt, HF
``generate`` (its dynamic cache) against lmlab's ``generate_ids`` on each decode path; the tokens
must agree.

Modes are timed round-robin call by call (benchmarks/timing.py), so the noise of a shared machine
hits all alike; tokens/s is from the median call, with its spread across rounds (min-max of the
rounds' median-call figures, and of the per-round ratios). On a machine that other jobs share, use
``--threads 1``.

    python benchmarks/bench_attention.py [--only decode,hf] [--contexts 1024,8192,32768] [--rounds 3]
                                         [--threads 1] [--json]
    python benchmarks/bench_attention.py --contexts 256,1024 --new-tokens 4 --rounds 1   # quick
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch
from timing import ratio, round_robin, summarise

from lmlab.generate import generate_ids
from lmlab.models.decoder import Decoder, DecoderConfig
from lmlab.models.registry import get_preset
from lmlab.nn.linear import use_gemv_layout
from lmlab.scaling import kv_ledger as kl

TASKS = ("decode", "hf")
MODES = ("mha", "gqa", "mqa", "mla-naive", "mla-absorbed")


def base_config(args: argparse.Namespace, block_size: int) -> DecoderConfig:
    """The shared LLaMA-style shape (RMSNorm, SwiGLU, RoPE, MHA) every kind is derived from."""
    return get_preset("llama-tiny", vocab_size=args.vocab, block_size=block_size, n_layer=args.layers,
                      n_head=args.heads, n_kv_heads=args.heads, d_model=args.d_model)


def fill_random(cache: object, gen: torch.Generator) -> None:
    """Fill every tensor of a cache object (KVCache's k and v, MLACache's latent) with N(0, 1) numbers."""
    for t in vars(cache).values():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype))


@torch.inference_mode()
def decode_steps(model: Decoder, cache: object, start: int, n: int, first: torch.Tensor) -> None:
    """Greedy-decode ``n`` tokens after the ``start`` cached positions (the cache's later ones are
    overwritten), one ``model(token, kv_cache)`` step at a time."""
    cache.length = start
    tok = first
    for _ in range(n):
        tok = model(tok, kv_cache=cache, last_only=True)[:, -1].argmax(-1, keepdim=True)


def run_mode(models: dict[str, Decoder], caches: dict[str, object], mode: str, T: int, n: int,
             first: torch.Tensor) -> None:
    """Decode the last ``n`` of ``T`` positions with one mode (``mla-naive``: the MLA model on that path)."""
    kind, _, path = mode.partition("-")
    if path:
        models[kind].set_mla_decode(path)
    decode_steps(models[kind], caches[kind], T - n, n, first)


def bench_decode(args: argparse.Namespace) -> dict:
    """Time batch-1 decoding of every mode at every context; return tokens/s, spreads, ratios and bytes."""
    base = base_config(args, max(args.contexts))
    groups = args.gqa_groups or kl.default_gqa_groups(args.heads)
    torch.manual_seed(args.seed)
    models = {kind: Decoder(kl.kind_config(base, kind, groups)).eval() for kind in kl.KINDS}
    for model in models.values():
        use_gemv_layout(model)  # as generation lays out an inference model's weights
    n = args.new_tokens
    first = torch.zeros(1, 1, dtype=torch.long)
    out: dict = {"configs": {k: {f: getattr(m.config, f) for f in ("n_kv_heads", "head_dim", "kv_lora_rank",
                                                                  "qk_rope_head_dim")}
                             for k, m in models.items()},
                 "params": {k: m.num_params() for k, m in models.items()}, "contexts": {}}
    for T in args.contexts:
        gen = torch.Generator().manual_seed(args.seed)
        caches = {kind: model.new_kv_cache(1, T) for kind, model in models.items()}
        for cache in caches.values():
            fill_random(cache, gen)
        rows = {r.kind: r for r in kl.kv_ledger(base, T, 1, "fp32", groups).rows}  # base MHA: a row per kind
        fns = {m: (lambda i, m=m, T=T, caches=caches: run_mode(models, caches, m, T, n, first))
               for m in MODES}
        for m in MODES:  # warm up
            run_mode(models, caches, m, T, 2, first)
        s = summarise(round_robin(fns, args.repeats, args.rounds, torch.device("cpu")), n)
        out["contexts"][str(T)] = {
            "tokens_per_s": {m: round(v, 2) for m, v in s["speed"].items()},
            "tokens_per_s_rounds": {m: [round(v, 2) for v in r] for m, r in s["rounds"].items()},
            "ratio_to_mha": {m: ratio(s, m, "mha") for m in MODES if m != "mha"},
            "absorbed_vs_naive": ratio(s, "mla-absorbed", "mla-naive"),
            "cache_bytes": {k: c.nbytes for k, c in caches.items()},
            "formula_bytes": {k: rows[k].bytes_total for k in caches},
        }
    return out


def hf_config(args: argparse.Namespace):
    """The tiny dense DeepseekV3Config: the decode shape, MLA at DeepSeek-V2's ratios, no MoE."""
    from transformers import DeepseekV3Config

    hd = args.d_model // args.heads
    d_c, d_r = kl.mla_ratios(hd)
    return DeepseekV3Config(vocab_size=args.vocab, hidden_size=args.d_model,
                            intermediate_size=base_config(args, 1024).d_ff, num_hidden_layers=args.layers,
                            num_attention_heads=args.heads, num_key_value_heads=args.heads,
                            q_lora_rank=args.d_model // 2, kv_lora_rank=d_c, qk_rope_head_dim=d_r,
                            qk_nope_head_dim=hd, v_head_dim=hd, first_k_dense_replace=args.layers,
                            max_position_embeddings=1024, tie_word_embeddings=False)


def bench_hf(args: argparse.Namespace) -> dict:
    """Greedy generation, HF DeepseekV3ForCausalLM.generate vs lmlab on both MLA decode paths."""
    from transformers import DeepseekV3ForCausalLM

    from lmlab.interop.hf_deepseek import load_hf_deepseek

    torch.manual_seed(args.seed)
    hf = DeepseekV3ForCausalLM(hf_config(args)).eval()
    with torch.no_grad():  # O(1) logits, so the greedy paths are not decided by near-ties
        for p in hf.parameters():
            p.normal_(0.0, 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_hf_deepseek(tmp)
    prompt = torch.randint(0, args.vocab, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    n = args.hf_new_tokens
    tokens: dict[str, list[int]] = {}

    def run_hf(_: int, k: int = n) -> None:
        with torch.inference_mode():
            y = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=k,
                            min_new_tokens=k, do_sample=False, pad_token_id=0)
        tokens["hf"] = y[0, prompt.shape[1]:].tolist()

    def run_ours(path: str, k: int = n) -> None:
        ours.set_mla_decode(path)
        tokens[path] = generate_ids(ours, prompt, k, temperature=0)[0, prompt.shape[1]:].tolist()

    fns = {"hf": run_hf, "naive": lambda i: run_ours("naive"), "absorbed": lambda i: run_ours("absorbed")}
    run_hf(0, 4)  # warm up
    run_ours("naive", 4)
    run_ours("absorbed", 4)
    s = summarise(round_robin(fns, args.hf_repeats, args.rounds, torch.device("cpu")), n)
    return {"params": ours.num_params(), "config": {"q_lora_rank": ours.config.q_lora_rank,
                                                     "kv_lora_rank": ours.config.kv_lora_rank,
                                                     "qk_rope_head_dim": ours.config.qk_rope_head_dim},
            "tokens_per_s": {m: round(v, 1) for m, v in s["speed"].items()},
            "tokens_per_s_rounds": {m: [round(v, 1) for v in r] for m, r in s["rounds"].items()},
            "ratio": {"absorbed_vs_hf": ratio(s, "absorbed", "hf"), "naive_vs_hf": ratio(s, "naive", "hf")},
            "same_tokens": tokens["hf"] == tokens["naive"] == tokens["absorbed"]}


def spread(values: list[float], digits: int = 1) -> str:
    """``min-max`` of a list of figures."""
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def print_report(r: dict, args: argparse.Namespace) -> None:
    """Print the figures of :func:`main` as tables."""
    from lmlab.console import human_bytes

    c = r["config"]
    print(f"cpu, {c['threads']} threads, {args.rounds} rounds x {args.repeats} calls; "
          f"d_model {c['d_model']}, {c['heads']} heads x {c['d_model'] // c['heads']}, {c['layers']} layers, "
          f"vocab {c['vocab']}, fp32")
    if "decode" in r:
        d = r["decode"]
        cf = d["configs"]
        print(f"\nBatch-1 greedy decoding, {c['new_tokens']} tokens after a filled cache of T - "
              f"{c['new_tokens']}: tokens/s (rounds min-max), speed vs MHA, cache bytes "
              f"(GQA n_g={cf['gqa']['n_kv_heads']}; MLA d_c={cf['mla']['kv_lora_rank']}, "
              f"d_h^R={cf['mla']['qk_rope_head_dim']})")
        print(f"  {'context':>8}  {'mode':<13}{'tokens/s':>10}{'rounds':>15}{'vs MHA':>8}{'cache':>11}"
              f"{'vs MHA':>8}")
        for T, x in d["contexts"].items():
            for m in MODES:
                kind = m.split("-")[0]
                speed = x["ratio_to_mha"][m]["median"] if m != "mha" else 1.0
                b = x["cache_bytes"][kind]
                rr = spread(x["tokens_per_s_rounds"][m])
                print(f"  {int(T):>8,}  {m:<13}{x['tokens_per_s'][m]:>10.1f}{rr:>15}"
                      f"{speed:>7.2f}x{human_bytes(b):>11}{b / x['cache_bytes']['mha']:>8.3f}")
            q = x["absorbed_vs_naive"]
            ok = all(x["cache_bytes"][k] == x["formula_bytes"][k] for k in x["cache_bytes"])
            rq = spread([q["min"], q["max"]], 2)
            print(f"  {'':>8}  MLA absorbed / naive {q['median']:.2f}x (rounds {rq}); "
                  f"cache bytes {'equal' if ok else 'NOT EQUAL'} to the ledger's formula")
    if "hf" in r:
        h = r["hf"]
        print(f"\nGreedy generation, tiny dense DeepseekV3 ({h['params']:,} params, q_lora_rank "
              f"{h['config']['q_lora_rank']}), {c['prompt_tokens']}-token prompt, {c['hf_new_tokens']} new "
              f"tokens, HF generate vs lmlab (same weights); same tokens: {h['same_tokens']}")
        print(f"  {'generator':<22}{'tokens/s':>10}{'rounds':>15}{'vs HF':>8}{'rounds':>13}")
        for m, label in (("hf", "HF generate"), ("naive", "lmlab, naive"), ("absorbed", "lmlab, absorbed")):
            q = h["ratio"].get(f"{m}_vs_hf")
            tail = f"{q['median']:>7.2f}x{spread([q['min'], q['max']], 2):>13}" if q else f"{'1.00x':>8}"
            rr = spread(h["tokens_per_s_rounds"][m])
            print(f"  {label:<22}{h['tokens_per_s'][m]:>10.1f}{rr:>15}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    ap.add_argument("--only", default=",".join(TASKS), help="comma-separated tasks: decode, hf")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--gqa-groups", type=int, default=None, help="KV heads of GQA (default: the ledger's)")
    ap.add_argument("--contexts", type=ints, default=[1024, 8192, 32768], help="comma-separated contexts T")
    ap.add_argument("--new-tokens", type=int, default=16, help="decoded tokens per timed call (decode)")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per mode per round (decode)")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="prompt length (hf)")
    ap.add_argument("--hf-new-tokens", type=int, default=64, help="new tokens per generate call (hf)")
    ap.add_argument("--hf-repeats", type=int, default=2, help="timed generate calls per round (hf)")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin rounds over the modes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args()
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(only) - set(TASKS))
    if unknown:
        raise SystemExit(f"--only: unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    if min(args.contexts) <= args.new_tokens:
        raise SystemExit(f"--contexts must exceed --new-tokens ({args.new_tokens})")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = {k: getattr(args, k) for k in ("vocab", "d_model", "heads", "layers", "contexts", "new_tokens",
                                             "repeats", "prompt_tokens", "hf_new_tokens", "hf_repeats",
                                             "rounds", "seed")}
    result: dict = {"config": config | {"threads": torch.get_num_threads()}}
    if "decode" in only:
        result["decode"] = bench_decode(args)
    if "hf" in only:
        result["hf"] = bench_hf(args)
    if args.json:
        print(json.dumps(result))
        return
    print_report(result, args)


if __name__ == "__main__":
    main()
