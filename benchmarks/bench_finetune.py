"""LoRA fine-tuning: lmlab's Decoder + lmlab LoRA vs Hugging Face ``LlamaForCausalLM`` + PEFT LoRA,
side by side in one process; and merged-LoRA inference against the base model.

Both models hold the SAME random base weights (HF builds them, lmlab imports the folder) and the
SAME LoRA (PEFT initialises A, lmlab copies it; B starts at zero in both), on the same target
modules (``--targets q,v``: PEFT's ``q_proj``/``v_proj``, lmlab's slices of the fused ``qkv``;
``all``: every projection of attention and MLP), and see the SAME token batches. A training step is
forward + loss + backward + clip + AdamW over the LoRA parameters (lmlab's AdamW groups, fused, for
both); HF computes its loss its own way (``labels=``), lmlab through ``causal_lm_loss``. The first
step's losses agree (printed), so both compute the same thing.

Modes are timed round-robin step by step (benchmarks/timing.py), so the noise of a shared machine
hits all alike; tokens/s is from the median step, with the spread across rounds (min-max of the
per-round ratios). Peak memory of each training mode is measured in a fresh subprocess (Linux):
the peak resident set during three steps (VmHWM, reset just before them) minus the RSS before them
(activations, gradients, optimizer state), with glibc's mmap threshold pinned.

Inference: a forward pass (no grad) over the same batch by the lmlab base model, the LoRA model
merged (``merge_tuning``: the update folded into the weights, the hook taken off), and unmerged;
merged should run at the base's speed.

    python benchmarks/bench_finetune.py [--targets q,v|all] [--rank 8] [--rounds 3] [--steps 6]
                                        [--threads 1] [--json]

Default shape: bench_train's LLaMA (d=256, 4 layers, 8 heads, vocab 8192, batch 8 x seq 256). On a
machine that other jobs share, use ``--threads 1`` (OpenMP threads waiting on each other on busy
cores slow both sides unpredictably) and read the ratios, not the absolute speeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from bench_train import batches, matmul_route, save_hf
from peak_memory import print_peak_growth, run_child
from timing import ratio, round_robin, summarise

TRAIN_MODES = ("hf-peft-fp32", "ours-lora-fp32")
INFER_MODES = ("ours-base", "ours-lora-merged", "ours-lora-unmerged")
HF_TARGETS = {"q,v": ["q_proj", "v_proj"],
              "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
OUR_TARGETS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "attn.proj", "gate_proj": "w1",
               "up_proj": "w3", "down_proj": "w2"}


def peft_model(folder: Path, args: argparse.Namespace) -> torch.nn.Module:
    """HF LlamaForCausalLM from ``folder`` with PEFT's LoRA (seeded init), in train mode."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, attn_implementation="sdpa")
    hf.config.use_cache = False
    torch.manual_seed(args.seed + 1)
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                        target_modules=HF_TARGETS[args.targets])
    return get_peft_model(hf, config).train()


def our_model(folder: Path, args: argparse.Namespace, lora_from: torch.nn.Module | None) -> torch.nn.Module:
    """lmlab's Decoder from ``folder`` with lmlab's LoRA on the same targets, A copied from PEFT's
    ``lora_from`` (B zero in both), in train mode."""
    from lmlab.interop.hf import load_hf
    from lmlab.tuning import TuningOptions, apply_tuning

    model = load_hf(folder, dtype=torch.float32)
    targets = [OUR_TARGETS[t] for t in HF_TARGETS[args.targets]]
    apply_tuning(model, TuningOptions(method="lora", r=args.rank, alpha=2 * args.rank, targets=targets))
    if lora_from is not None:
        copy_lora(lora_from, model)
    return model.train()


def copy_lora(peft: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Copy PEFT's LoRA A and B into ours (the same update in every layer)."""
    from lmlab.interop.peft import peft_modules

    theirs = {n.removeprefix("base_model.model.").removesuffix(".lora_A.default"): m.weight
              for n, m in peft.named_modules() if n.endswith("lora_A.default")}
    mapping = peft_modules(ours)  # HF module -> our (A, B, scale), views of our parameters
    with torch.no_grad():
        for hf_name, (a, b, _) in mapping.items():
            a.copy_(theirs[hf_name])
            b.zero_()


class Runner:
    """One training mode: a model, its AdamW and a ``step(batch)``."""

    def __init__(self, mode: str, folder: Path, args: argparse.Namespace,
                 peft: torch.nn.Module | None = None):
        from lmlab.train.optim import build_adamw

        self.mode = mode
        self.model = peft_model(folder, args) if mode.startswith("hf") else our_model(folder, args, peft)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = build_adamw(self.model, lr=1e-3, weight_decay=0.0, device=torch.device("cpu"))

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One full training step; return the loss."""
        from lmlab.train.objectives import causal_lm_loss

        if self.mode.startswith("hf"):
            loss = self.model(input_ids=batch["input_ids"], labels=batch["labels"],
                              shift_labels=batch["labels"]).loss
        else:
            loss = causal_lm_loss(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh subprocess: build one training mode, run three steps, print its peak RSS growth."""
    import peft  # noqa: F401  (imported in every mode, so all start alike)
    import transformers  # noqa: F401

    import lmlab.interop.hf  # noqa: F401

    runner = Runner(args.memory_child, Path(args.folder), args)
    print_peak_growth(runner.step, batches(args, 3))


def inference(folder: Path, args: argparse.Namespace, ours_trained: torch.nn.Module) -> dict:
    """Forward-pass tokens/s of the base, the merged LoRA model and the unmerged one; max |logit|
    difference of merged vs unmerged."""
    from lmlab.interop.hf import load_hf
    from lmlab.tuning import merge_tuning

    base = load_hf(folder, dtype=torch.float32).eval()
    unmerged = ours_trained.eval()
    merged = our_model(folder, args, None).eval()
    merged.load_state_dict(unmerged.state_dict())
    merge_tuning(merged)
    x = batches(args, 1)[0]["input_ids"]
    models = {"ours-base": base, "ours-lora-merged": merged, "ours-lora-unmerged": unmerged}

    def call(m: torch.nn.Module):
        return lambda i: m(x)

    with torch.no_grad():
        diff = (merged(x) - unmerged(x)).abs().max().item()
        for m in models.values():
            m(x)  # warm-up
        s = summarise(round_robin({k: call(m) for k, m in models.items()}, args.infer_steps, args.rounds,
                                  torch.device("cpu")), x.numel())
    return {"tokens_per_s": {k: round(v, 1) for k, v in s["speed"].items()},
            "ratios": {"merged_vs_base": ratio(s, "ours-lora-merged", "ours-base"),
                       "unmerged_vs_base": ratio(s, "ours-lora-unmerged", "ours-base")},
            "merged_vs_unmerged_max_abs_logit_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--targets", choices=sorted(HF_TARGETS), default="q,v")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per mode per round")
    ap.add_argument("--infer-steps", type=int, default=6, help="timed forward passes per mode per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", choices=TRAIN_MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hf"
        save_hf(folder, args)
        hf = Runner("hf-peft-fp32", folder, args)
        runners = {"hf-peft-fp32": hf, "ours-lora-fp32": Runner("ours-lora-fp32", folder, args, hf.model)}
        data = batches(args, args.warmup + args.steps)
        first_loss = {m: r.step(data[0]) for m, r in runners.items()}
        for r in runners.values():
            for b in data[1:args.warmup]:
                r.step(b)
        timed = data[args.warmup:]
        fns = {m: (lambda i, r=r: r.step(timed[i])) for m, r in runners.items()}
        times = round_robin(fns, len(timed), args.rounds, torch.device("cpu"))
        s = summarise(times, args.batch_size * args.seq)
        ours = runners["ours-lora-fp32"].model
        from lmlab.tuning import tuning_info

        info = tuning_info(ours)
        result: dict = {
            "config": {"vocab": args.vocab, "d_model": args.d_model, "layers": args.layers,
                       "heads": args.heads, "kv_heads": args.kv_heads, "seq": args.seq,
                       "batch_size": args.batch_size,
                       "targets": HF_TARGETS[args.targets], "rank": args.rank, "params": info.total,
                       "trainable": info.trainable, "threads": torch.get_num_threads(),
                       "load_average": os.getloadavg()[0]},
            "matmul_route": matmul_route(),
            "train_tokens_per_s": {m: round(v, 1) for m, v in s["speed"].items()},
            "train_ratio": ratio(s, "ours-lora-fp32", "hf-peft-fp32"),
            "first_step_loss": {m: round(v, 6) for m, v in first_loss.items()},
        }
        result["inference"] = inference(folder, args, ours)
        del runners, hf
        if not args.no_memory:
            keys = ("vocab", "d-model", "layers", "heads", "kv-heads", "seq", "batch-size", "seed", "threads",
                    "targets", "rank")
            flags = [f"--{k}={getattr(args, k.replace('-', '_'))}" for k in keys]
            result["memory_mib"] = {m: run_child([sys.executable, __file__, "--memory-child", m,
                                                  "--folder", str(folder), *flags]) for m in TRAIN_MODES}
        result["config"]["load_average_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result))
        return
    c = result["config"]
    print(f"LoRA r={c['rank']} on {','.join(c['targets'])}: LLaMA d={c['d_model']} layers={c['layers']} "
          f"heads={c['heads']}/{c['kv_heads']} vocab={c['vocab']} ({c['trainable']:,} of {c['params']:,} "
          f"params trained), batch {c['batch_size']} x seq {c['seq']}, {c['threads']} threads, load average "
          f"{c['load_average']:.1f} -> {c['load_average_end']:.1f}")
    route = result["matmul_route"]
    print(f"  large fp32 CPU matmuls of ours: {route['route']} ({route['how']})")
    for m, v in result["train_tokens_per_s"].items():
        mem = result.get("memory_mib", {}).get(m)
        print(f"  {m:<18}{v:>10.1f} tokens/s   first loss {result['first_step_loss'][m]:.4f}"
              + (f"   peak +{mem['peak_extra_mib']:.0f} MiB" if mem else ""))
    r = result["train_ratio"]
    print(f"  training: ours / HF+PEFT {r['median']:.2f}x (rounds {r['min']:.2f}-{r['max']:.2f})")
    inf = result["inference"]
    for m, v in inf["tokens_per_s"].items():
        print(f"  {m:<22}{v:>10.1f} tokens/s (forward)")
    for k, r in inf["ratios"].items():
        print(f"  {k:<22}{r['median']:.2f}x (rounds {r['min']:.2f}-{r['max']:.2f})")
    print(f"  merged vs unmerged logits: max |diff| {inf['merged_vs_unmerged_max_abs_logit_diff']:.2e}")


if __name__ == "__main__":
    main()
