"""Training-step speed and memory: lmlab's Decoder vs Hugging Face ``LlamaForCausalLM``.

Both models hold the SAME random weights (HF builds them, lmlab imports the folder) and
train on the SAME token batches with the same optimizer (lmlab's AdamW groups, fused),
in one process. A step is forward + loss + backward + clip + AdamW; HF computes its
loss its own way (``labels=``), lmlab with ``causal_lm_loss``; both score the same
next tokens. Modes are timed round-robin step by step, so the noise of a shared
machine hits all alike; tokens/s is from the median step time, with its spread across rounds
(min-max of the rounds' median-step figures, and of the per-round ratios). Peak memory is
measured per mode in a fresh subprocess (Linux): the peak resident set during three steps
(VmHWM, reset just before them) minus the RSS before them, i.e. activations, gradients and
optimizer state; glibc's mmap threshold is pinned so freed tensors leave the RSS.

    python benchmarks/bench_train.py [--steps 8] [--rounds 2] [--json] [--no-memory]

Modes: hf-fp32, ours-fp32, hf-default and ours-default (default = ``--precision auto``:
bf16 autocast where the hardware has it, as ``lmlab pretrain`` does). ours-fp32-blas is
ours-fp32 with ``LMLAB_CPU_MATMUL=aten``: its matmuls on torch's BLAS like HF's, so the
gain of oneDNN matmuls (``lmlab/nn/linear.py``) and of everything else show apart;
ours-fp32-onednn forces the oneDNN route, so the default (auto) route can be checked against
the best forced one. The
other ours-* modes take the route ``LMLAB_CPU_MATMUL`` says (``auto``: the one measured
faster on this machine, printed; where that is aten, ours-fp32 equals ours-fp32-blas).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from peak_memory import print_peak_growth, run_child

MODES = ("hf-fp32", "ours-fp32", "ours-fp32-blas", "ours-fp32-onednn", "hf-default", "ours-default")
# modes that force a CPU matmul route, by their suffix
FORCED_ROUTE = {"-blas": "aten", "-onednn": "onednn"}
COMPILED = ("ours-fp32-compiled", "ours-default-compiled")


def save_hf(folder: Path, args: argparse.Namespace) -> None:
    """Save a randomly initialised HF LlamaForCausalLM of the benchmark's shape to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        intermediate_size=int(8 * args.d_model / 3 + 63) // 64 * 64,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.seq,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)


def load(mode: str, folder: Path, device: torch.device) -> torch.nn.Module:
    """Load the saved weights as the model of ``mode`` (HF or lmlab), in train mode on ``device``."""
    if mode.startswith("hf"):
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(
            folder, torch_dtype=torch.float32, attn_implementation="sdpa"
        )
        model.config.use_cache = False
    else:
        from lmlab.interop.hf import load_hf

        model = load_hf(folder, dtype=torch.float32)
    return model.to(device).train()


def batches(args: argparse.Namespace, n: int) -> list[dict[str, torch.Tensor]]:
    """``n`` fixed batches of ``batch x seq`` windows: from --data's train split, else random ids."""
    g = torch.Generator().manual_seed(1)
    if args.data:
        from lmlab.data.prepare import load_prepared
        from lmlab.data.windows import RandomWindows

        data = load_prepared(args.data)
        if data.vocab_size > args.vocab:
            raise SystemExit(f"--data has vocab {data.vocab_size} > --vocab {args.vocab}; raise --vocab")
        src = RandomWindows(data.train, block_size=args.seq, batch_size=args.batch_size, seed=1)
        return [src.next() for _ in range(n)]
    out = []
    for _ in range(n):
        x = torch.randint(0, args.vocab, (args.batch_size, args.seq + 1), generator=g)
        out.append({"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous()})
    return out


class Runner:
    """One mode: a model, its optimizer and a ``step(batch) -> loss`` closure."""

    def __init__(self, mode: str, folder: Path, device: torch.device):
        from lmlab.device import resolve_precision
        from lmlab.train.optim import build_adamw

        self.mode = mode
        self.device = device
        self.model = load(mode, folder, device)
        self.precision = "fp32" if "fp32" in mode else resolve_precision(device, "auto")
        self.opt = build_adamw(self.model, lr=1e-4, weight_decay=0.1, device=device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if mode.endswith("-compiled"):
            self.model = torch.compile(self.model)

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One full training step; return the loss."""
        route = next((r for suffix, r in FORCED_ROUTE.items() if self.mode.endswith(suffix)), None)
        if route is None:
            return self._step(batch)
        saved = os.environ.get("LMLAB_CPU_MATMUL")
        os.environ["LMLAB_CPU_MATMUL"] = route
        try:
            return self._step(batch)
        finally:
            if saved is None:
                del os.environ["LMLAB_CPU_MATMUL"]
            else:
                os.environ["LMLAB_CPU_MATMUL"] = saved

    def _step(self, batch: dict[str, torch.Tensor]) -> float:
        from lmlab.device import autocast
        from lmlab.train.objectives import causal_lm_loss

        batch = {k: v.to(self.device) for k, v in batch.items()}
        with autocast(self.device, self.precision):
            if self.mode.startswith("hf"):  # HF's own loss path; shift_labels: the labels are already shifted
                loss = self.model(
                    input_ids=batch["input_ids"], labels=batch["labels"], shift_labels=batch["labels"]
                ).loss
            else:
                loss = causal_lm_loss(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


def matmul_route() -> dict:
    """Which library runs ours' large fp32 CPU matmuls, and how that was chosen."""
    from lmlab.nn.linear import _X86, auto_matmul_choice, cpu_matmul_backend, onednn_available

    route = cpu_matmul_backend()
    want = os.environ.get("LMLAB_CPU_MATMUL", "auto").strip().lower() or "auto"
    if want != "auto":
        return {"route": route, "how": f"LMLAB_CPU_MATMUL={want}"}
    if not (_X86 and onednn_available()):
        return {"route": route, "how": "auto: no oneDNN route on this machine"}
    c = auto_matmul_choice()
    how = (f"auto, {'measured now' if c['source'] == 'measured' else 'cached measurement'}: "
           f"aten {1e3 * c['aten_s']:.1f} ms, oneDNN {1e3 * c['onednn_s']:.1f} ms on its test products")
    return {**c, "how": how}



def memory_child(args: argparse.Namespace) -> None:
    """In a fresh subprocess: build one mode, run a few steps, print its peak RSS growth as JSON.

    The kernel's RSS high-water mark is reset (``/proc/self/clear_refs``) just before the
    first step, so loading the weights does not count; the peak is then read from VmHWM.
    """
    import transformers  # noqa: F401  (imported in every mode, so all start alike)

    import lmlab.interop.hf  # noqa: F401

    runner = Runner(args.memory_child, Path(args.folder), torch.device(args.device))
    data = batches(args, 3)
    print_peak_growth(runner.step, data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per mode per round")
    ap.add_argument("--rounds", type=int, default=2, help="round-robin rounds over the modes")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first")
    ap.add_argument("--data", help="prepared data folder (default: random token ids)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="also time our model under torch.compile")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", choices=MODES + COMPILED, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hf"
        save_hf(folder, args)
        modes = MODES + (COMPILED if args.compile else ())
        runners = {m: Runner(m, folder, device) for m in modes}
        data = batches(args, args.warmup + args.steps)
        first_loss = {m: r.step(data[0]) for m, r in runners.items()}  # same weights + data: same loss
        for r in runners.values():
            for b in data[1 : args.warmup]:
                r.step(b)
        times: dict[str, list[list[float]]] = {m: [] for m in modes}  # per round, per step
        for _ in range(args.rounds):
            for m in modes:
                times[m].append([])
            for b in data[args.warmup :]:
                for m, r in runners.items():  # round-robin per step
                    t = time.perf_counter()
                    r.step(b)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[m][-1].append(time.perf_counter() - t)
        ours = runners["ours-fp32"].model
        tokens = args.batch_size * args.seq
        per_round = {m: [tokens / statistics.median(r) for r in t] for m, t in times.items()}

        def ratio(a: str, b: str) -> dict[str, float]:
            """Ratio of mode a's tokens/s to b's: of the medians over all steps, and min-max per round."""
            rounds = [x / y for x, y in zip(per_round[a], per_round[b])]
            return {"median": round(tps[a] / tps[b], 2), "min": round(min(rounds), 2),
                    "max": round(max(rounds), 2)}

        result: dict = {
            "config": {
                "vocab": args.vocab,
                "d_model": args.d_model,
                "layers": args.layers,
                "heads": args.heads,
                "kv_heads": args.kv_heads,
                "seq": args.seq,
                "batch_size": args.batch_size,
                "params": ours.num_params(),
                "device": str(device),
                "threads": torch.get_num_threads(),
                "default_precision": runners["ours-default"].precision,
                "data": args.data or "random ids",
            },
            "matmul_route": matmul_route(),
            "tokens_per_s": {m: round(tokens / statistics.median(sum(t, [])), 1) for m, t in times.items()},
            "tokens_per_s_rounds": {m: [round(v, 1) for v in r] for m, r in per_round.items()},
            "first_step_loss": {m: round(v, 6) for m, v in first_loss.items()},
        }
        tps = result["tokens_per_s"]
        result["ratios"] = {
            "ours_fp32_vs_hf_fp32": ratio("ours-fp32", "hf-fp32"),
            "ours_fp32_blas_vs_hf_fp32": ratio("ours-fp32-blas", "hf-fp32"),
            "ours_fp32_onednn_vs_hf_fp32": ratio("ours-fp32-onednn", "hf-fp32"),
            "ours_default_vs_hf_fp32": ratio("ours-default", "hf-fp32"),
            "ours_default_vs_hf_default": ratio("ours-default", "hf-default"),
        }
        if args.compile:
            result["ratios"]["ours_fp32_compiled_vs_hf_fp32"] = ratio("ours-fp32-compiled", "hf-fp32")
            result["ratios"]["ours_default_compiled_vs_hf_fp32"] = ratio("ours-default-compiled", "hf-fp32")
        del runners
        if not args.no_memory:
            mem = {}
            for m in MODES:  # compiled modes would spend their subprocess compiling
                cmd = [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    m,
                    "--folder",
                    str(folder),
                    *[
                        f"--{k}={getattr(args, k.replace('-', '_'))}"
                        for k in (
                            "vocab",
                            "d-model",
                            "layers",
                            "heads",
                            "kv-heads",
                            "seq",
                            "batch-size",
                            "seed",
                            "threads",
                            "device",
                        )
                    ],
                ]
                if args.data:
                    cmd.append(f"--data={args.data}")
                mem[m] = run_child(cmd)
            result["memory_mib"] = mem
    if args.json:
        print(json.dumps(result))
        return
    c = result["config"]
    print(
        f"LLaMA d={c['d_model']} layers={c['layers']} heads={c['heads']}/{c['kv_heads']} vocab={c['vocab']} "
        f"({c['params']:,} params), batch {c['batch_size']} x seq {c['seq']}, {c['device']}, "
        f"{c['threads']} threads, default precision {c['default_precision']}, {c['data']}"
    )
    route = result["matmul_route"]
    print(f"  large fp32 CPU matmuls of ours-*: {route['route']} ({route['how']})")
    print(
        f"  {'mode':<22}{'tokens/s':>10}{'rounds min-max':>18}{'1st loss':>11}"
        + ("" if args.no_memory else f"{'peak +MiB':>11}")
    )
    for m in result["tokens_per_s"]:
        mem = result.get("memory_mib", {}).get(m)
        mem_col = "" if args.no_memory else (f"{mem['peak_extra_mib']:>11.1f}" if mem else f"{'-':>11}")
        r = result["tokens_per_s_rounds"][m]
        print(f"  {m:<22}{tps[m]:>10.1f}{f'{min(r):.0f}-{max(r):.0f}':>18}{first_loss[m]:>11.4f}{mem_col}")
    for k, v in result["ratios"].items():
        print(f"  {k:<34}{v['median']:>6.2f}x  (rounds {v['min']:.2f}-{v['max']:.2f})")
    print(f"  (tokens/s from the median step over {args.rounds} round(s) of {args.steps} steps per mode)")


if __name__ == "__main__":
    main()
