"""Encoders and encoder-decoders against Hugging Face, side by side in one process (CPU):

- ``mlm``: a masked-LM training step of lmlab's Encoder vs ``BertForMaskedLM``;
- ``t5``: a training step of lmlab's EncoderDecoder vs ``T5ForConditionalGeneration`` (v1.0);
- ``decode``: greedy T5 decoding, lmlab's ``generate`` vs HF ``generate``.

Each pair holds the SAME random weights (HF builds them, ``save_pretrained``, lmlab imports the
folder) and sees the SAME batches. A training step is forward + loss + backward + clip + AdamW
(lmlab's AdamW groups, fused, for both); HF computes its loss its own way (``labels=``: full
logits, then cross-entropy), lmlab through its models' ``targets=`` path (the Encoder scores only
the masked positions; the EncoderDecoder fuses its output layer with the loss in fp32). MLM batches
mask 15% of the positions (BERT's rate: the input token becomes [MASK], its label the original,
-100 elsewhere) with an all-ones attention mask (packed windows); T5 batches are span-corruption
shaped: a source of ``--src`` tokens and a target of ``--tgt`` (T5's 512 -> 114 proportions).
Dropout is 0 in both (lmlab's CPU presets train without it), so the first-step losses agree.

Modes are timed round-robin step by step, so the noise of a shared machine hits all alike;
tokens/s is from the median step time (MLM: input tokens; T5: source + target tokens), with its
spread across rounds (min-max of the rounds' median-step figures, and of the per-round ratios).
Peak memory of each training mode is measured in a fresh subprocess (Linux): the peak resident
set during three steps (VmHWM, reset just before them) minus the RSS before them (activations,
gradients, optimizer state), with glibc's mmap threshold pinned so freed tensors leave the RSS.
Greedy decoding runs each generator to the full ``--new-tokens`` (HF: ``min_new_tokens``; lmlab:
no end-of-sequence id), from the same sources, batch 1 and 8, and checks the tokens agree.

    python benchmarks/bench_encoders.py [--only mlm,t5,decode] [--rounds 3] [--steps 6] [--threads 1] [--json]

Shapes: BERT d=256, 4 layers, 4 heads, batch 16 x 128; T5 (v1.0) d=256, 4+4 layers, 4 heads,
d_ff 1024, batch 16 x (128 + 32); both with an 8192-token vocabulary (bench_train's, the size of the
lab's own tokenizers); ``--mlm-vocab 30522 --t5-vocab 32128`` gives BERT's and T5's own, where the
output layers weigh more. On a machine that other jobs share, use ``--threads 1``: two OpenMP
threads that wait on each other on busy cores slow both sides by up to 10x, unpredictably.

Modes: ``hf-fp32``, ``ours-fp32``, ``hf-default``, ``ours-default`` (default = ``--precision auto``
as ``lmlab pretrain`` resolves it: bf16 autocast where the hardware has it, else fp32).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from peak_memory import print_peak_growth, run_child
from timing import ratio, round_robin, summarise

TRAIN_TASKS = ("mlm", "t5")
TASKS = (*TRAIN_TASKS, "decode")
MODES = ("hf-fp32", "ours-fp32", "hf-default", "ours-default")
SHAPE = ("mlm_vocab", "mlm_d_model", "mlm_layers", "mlm_heads", "seq", "batch_size", "mask_rate",
         "t5_vocab", "t5_d_model", "t5_layers", "t5_heads", "t5_d_ff", "src", "tgt", "t5_batch_size", "seed")
MASK_ID = 103  # [MASK] in BERT's WordPiece vocabulary; any id works for timing


# ---------------------------------------------------------------- models


def save_hf(task: str, folder: Path, args: argparse.Namespace) -> None:
    """Save a randomly initialised HF model of ``task``'s shape to ``folder`` (dropout 0)."""
    from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration

    torch.manual_seed(args.seed)
    if task == "mlm":
        d = args.mlm_d_model
        cfg = BertConfig(vocab_size=args.mlm_vocab, hidden_size=d, num_hidden_layers=args.mlm_layers,
                         num_attention_heads=args.mlm_heads, intermediate_size=4 * d,
                         max_position_embeddings=args.seq, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
        BertForMaskedLM(cfg).save_pretrained(folder)
        return
    d = args.t5_d_model
    cfg = T5Config(vocab_size=args.t5_vocab, d_model=d, d_kv=d // args.t5_heads, d_ff=args.t5_d_ff,
                   num_layers=args.t5_layers, num_decoder_layers=args.t5_layers, num_heads=args.t5_heads,
                   dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=True,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(cfg).save_pretrained(folder)


def load(task: str, side: str, folder: Path, device: torch.device) -> torch.nn.Module:
    """Load the saved weights as HF's (``side='hf'``, SDPA attention) or lmlab's model, in train mode."""
    if side == "hf":
        from transformers import BertForMaskedLM, T5ForConditionalGeneration

        cls = BertForMaskedLM if task == "mlm" else T5ForConditionalGeneration
        model = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
        model.config.use_cache = False
    else:
        from lmlab.interop.hf_auto import load_hf_model

        model, _ = load_hf_model(folder, dtype=torch.float32)
    return model.to(device).train()


def batches(task: str, args: argparse.Namespace, n: int) -> list[dict[str, torch.Tensor]]:
    """``n`` fixed batches of random ids for ``task`` (see the module docstring)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        if task == "mlm":
            ids = torch.randint(1000, args.mlm_vocab, (args.batch_size, args.seq), generator=g)
            masked = torch.rand(ids.shape, generator=g) < args.mask_rate
            labels = torch.where(masked, ids, torch.full_like(ids, -100))
            out.append({"input_ids": ids.masked_fill(masked, MASK_ID), "attention_mask": torch.ones_like(ids),
                        "labels": labels})
        else:
            src = torch.randint(2, args.t5_vocab, (args.t5_batch_size, args.src), generator=g)
            tgt = torch.randint(2, args.t5_vocab, (args.t5_batch_size, args.tgt), generator=g)
            out.append({"input_ids": src, "attention_mask": torch.ones_like(src), "labels": tgt})
    return out


def tokens_per_batch(task: str, args: argparse.Namespace) -> int:
    """Tokens one training batch counts for tokens/s (MLM: inputs; T5: source + target)."""
    return args.batch_size * args.seq if task == "mlm" else args.t5_batch_size * (args.src + args.tgt)


class Runner:
    """One training mode of one task: a model, its optimizer and a ``step(batch) -> loss`` closure."""

    def __init__(self, task: str, mode: str, folder: Path, device: torch.device):
        from lmlab.device import resolve_precision
        from lmlab.train.optim import build_adamw

        self.task, self.mode, self.device = task, mode, device
        self.side = "hf" if mode.startswith("hf") else "ours"
        self.model = load(task, self.side, folder, device)
        self.precision = "fp32" if "fp32" in mode else resolve_precision(device, "auto")
        self.opt = build_adamw(self.model, lr=1e-4, weight_decay=0.1, device=device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def loss(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean cross-entropy of batch ``b``, each side its own way."""
        if self.side == "hf":
            return self.model(**b).loss
        return self.model(b["input_ids"], attention_mask=b["attention_mask"], targets=b["labels"])

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One full training step; return the loss."""
        from lmlab.device import autocast

        batch = {k: v.to(self.device) for k, v in batch.items()}
        with autocast(self.device, self.precision):
            loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


# ---------------------------------------------------------------- timing


def bench_training(task: str, folder: Path, args: argparse.Namespace, device: torch.device) -> dict:
    """Time the four training modes of ``task`` round-robin; return tokens/s, spreads, ratios, losses."""
    runners = {m: Runner(task, m, folder, device) for m in MODES}
    data = batches(task, args, args.warmup + args.steps)
    first_loss = {m: r.step(data[0]) for m, r in runners.items()}  # same weights + data: same loss
    for r in runners.values():
        for b in data[1: args.warmup]:
            r.step(b)
    timed = data[args.warmup:]
    fns = {m: (lambda i, r=r: r.step(timed[i])) for m, r in runners.items()}
    s = summarise(round_robin(fns, len(timed), args.rounds, device), tokens_per_batch(task, args))
    return {
        "params": runners["ours-fp32"].model.num_params(),
        "default_precision": runners["ours-default"].precision,
        "tokens_per_s": {m: round(v, 1) for m, v in s["speed"].items()},
        "tokens_per_s_rounds": {m: [round(v, 1) for v in r] for m, r in s["rounds"].items()},
        "first_step_loss": {m: round(v, 5) for m, v in first_loss.items()},
        "ratios": {"ours_fp32_vs_hf_fp32": ratio(s, "ours-fp32", "hf-fp32"),
                   "ours_default_vs_hf_default": ratio(s, "ours-default", "hf-default"),
                   "ours_default_vs_hf_fp32": ratio(s, "ours-default", "hf-fp32")},
    }


def bench_decode(folder: Path, args: argparse.Namespace, device: torch.device) -> dict:
    """Greedy T5 decoding, HF ``generate`` vs lmlab ``generate``, at each of ``--decode-batch``."""
    hf = load("t5", "hf", folder, device).eval()
    hf.config.use_cache = True
    ours = load("t5", "ours", folder, device).eval()
    g = torch.Generator().manual_seed(3)
    out: dict = {}
    for B in args.decode_batch:
        src = torch.randint(2, args.t5_vocab, (B, args.decode_src), generator=g).to(device)
        out[f"batch{B}"] = decode_batch(hf, ours, src, args, device)
    return out


def decode_batch(hf: torch.nn.Module, ours: torch.nn.Module, src: torch.Tensor, args: argparse.Namespace,
                 device: torch.device) -> dict:
    """Time greedy decoding of the sources ``src (B, S)`` to ``--new-tokens`` tokens per row, both ways."""
    from lmlab.generate import generate_ids

    n, mask = args.new_tokens, torch.ones_like(src)
    results: dict[str, list[list[int]]] = {}

    def run_hf(_: int, k: int = n) -> None:
        with torch.inference_mode():  # min_new_tokens: no end-of-sequence before k tokens
            y = hf.generate(src, attention_mask=mask, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                            num_beams=1)
        results["hf"] = y[:, 1:].tolist()  # without the decoder start token

    def run_ours(_: int, k: int = n) -> None:
        results["ours"] = generate_ids(ours, src, k, temperature=0, eos_id=()).tolist()  # no eos stop

    run_hf(0, 8)  # warm up both
    run_ours(0, 8)
    s = summarise(round_robin({"hf": run_hf, "ours": run_ours}, args.decode_repeats, args.rounds, device),
                  src.shape[0] * n)
    return {"tokens_per_s": {m: round(v, 1) for m, v in s["speed"].items()},
            "tokens_per_s_rounds": {m: [round(v, 1) for v in r] for m, r in s["rounds"].items()},
            "ratio": ratio(s, "ours", "hf"),
            "same_tokens": results["hf"] == results["ours"],
            "new_tokens": {m: len(r[0]) for m, r in results.items()}}


# ---------------------------------------------------------------- memory



def memory_child(args: argparse.Namespace) -> None:
    """In a fresh subprocess: build one task's mode, run three steps, print its peak RSS growth as JSON.

    The kernel's RSS high-water mark is reset (``/proc/self/clear_refs``) just before the first
    step, so loading the weights does not count; the peak is then read from VmHWM.
    """
    import transformers  # noqa: F401  (imported in every mode, so all start alike)

    import lmlab.interop.hf_auto  # noqa: F401

    task, mode = args.memory_child.split(":")
    runner = Runner(task, mode, Path(args.folder), torch.device(args.device))
    data = batches(task, args, 3)
    print_peak_growth(runner.step, data)


def measure_memory(task: str, folder: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Peak extra RSS of each training mode of ``task``, each in a fresh subprocess."""
    mem = {}
    flags = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in (*SHAPE, "threads", "device")]
    for m in MODES:
        cmd = [sys.executable, __file__, "--memory-child", f"{task}:{m}", "--folder", str(folder), *flags]
        mem[m] = run_child(cmd)
    return mem


# ---------------------------------------------------------------- report


def print_report(r: dict, args: argparse.Namespace) -> None:
    """Print the figures of :func:`main` as tables."""
    c = r["config"]
    print(f"{c['device']}, {c['threads']} threads, {args.rounds} rounds; "
          f"large fp32 CPU matmuls of ours-*: {r['matmul_route']}")
    titles = {"mlm": (f"MLM training: BERT d={c['mlm_d_model']} layers={c['mlm_layers']} "
                      f"heads={c['mlm_heads']} vocab={c['mlm_vocab']}, "
                      f"batch {c['batch_size']} x seq {c['seq']}, {c['mask_rate']:.0%} masked, "
                      "lmlab Encoder vs BertForMaskedLM"),
              "t5": (f"T5 training: d={c['t5_d_model']} layers={c['t5_layers']}+{c['t5_layers']} "
                     f"heads={c['t5_heads']} d_ff={c['t5_d_ff']} vocab={c['t5_vocab']}, batch "
                     f"{c['t5_batch_size']} x (source {c['src']} + target {c['tgt']}), "
                     "lmlab EncoderDecoder vs T5ForConditionalGeneration")}
    for task in TRAIN_TASKS:
        if task not in r:
            continue
        t = r[task]
        print(f"\n{titles[task]} ({t['params']:,} params; default precision {t['default_precision']})")
        mem = t.get("memory_mib", {})
        print(f"  {'mode':<14}{'tokens/s':>10}{'rounds min-max':>18}{'1st loss':>11}"
              + (f"{'peak +MiB':>11}" if mem else ""))
        for m, v in t["tokens_per_s"].items():
            rr = t["tokens_per_s_rounds"][m]
            col = f"{mem[m]['peak_extra_mib']:>11.1f}" if mem else ""
            spread = f"{min(rr):.0f}-{max(rr):.0f}"
            print(f"  {m:<14}{v:>10.1f}{spread:>18}{t['first_step_loss'][m]:>11.4f}{col}")
        for k, v in t["ratios"].items():
            print(f"  {k:<30}{v['median']:>6.2f}x  (rounds {v['min']:.2f}-{v['max']:.2f})")
    if "decode" in r:
        print(f"\nGreedy T5 decoding (the T5 above, fp32): source {c['decode_src']} tokens, "
              f"{c['new_tokens']} new tokens per row, lmlab generate vs HF generate "
              f"({args.decode_repeats} calls per round; tokens/s of the median call)")
        print(f"  {'batch':<8}{'HF tok/s':>10}{'lmlab tok/s':>13}{'ratio':>8}{'rounds':>14}  same tokens")
        for key, d in r["decode"].items():
            tp, q = d["tokens_per_s"], d["ratio"]
            spread = f"{q['min']:.2f}-{q['max']:.2f}"
            print(f"  {key[5:]:<8}{tp['hf']:>10.1f}{tp['ours']:>13.1f}{q['median']:>7.2f}x{spread:>14}"
                  f"  {d['same_tokens']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(TASKS), help="comma-separated tasks: mlm, t5, decode")
    ap.add_argument("--mlm-vocab", type=int, default=8192, help="vocabulary (BERT's own: 30522)")
    ap.add_argument("--mlm-d-model", type=int, default=256)
    ap.add_argument("--mlm-layers", type=int, default=4)
    ap.add_argument("--mlm-heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--mask-rate", type=float, default=0.15)
    ap.add_argument("--t5-vocab", type=int, default=8192, help="vocabulary (T5's own: 32128)")
    ap.add_argument("--t5-d-model", type=int, default=256)
    ap.add_argument("--t5-layers", type=int, default=4, help="encoder layers (and as many decoder layers)")
    ap.add_argument("--t5-heads", type=int, default=4)
    ap.add_argument("--t5-d-ff", type=int, default=1024)
    ap.add_argument("--src", type=int, default=128, help="T5 training source tokens")
    ap.add_argument("--tgt", type=int, default=32, help="T5 training target tokens")
    ap.add_argument("--t5-batch-size", type=int, default=16)
    ap.add_argument("--decode-batch", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8],
                    help="comma-separated batch sizes for greedy decoding")
    ap.add_argument("--decode-src", type=int, default=64, help="source tokens per row when decoding")
    ap.add_argument("--new-tokens", type=int, default=64, help="new tokens per row when decoding")
    ap.add_argument("--decode-repeats", type=int, default=3, help="timed generate calls per round")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per mode per round")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin rounds over the modes")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(only) - set(TASKS))
    if unknown:
        raise SystemExit(f"--only: unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")

    from lmlab.nn.linear import cpu_matmul_backend

    device = torch.device(args.device)
    config = {**{k: getattr(args, k) for k in SHAPE}, "decode_src": args.decode_src,
              "new_tokens": args.new_tokens, "decode_batch": args.decode_batch, "device": str(device),
              "threads": torch.get_num_threads(), "rounds": args.rounds, "steps": args.steps}
    result: dict = {"config": config,
                    "matmul_route": cpu_matmul_backend()}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"mlm": Path(tmp) / "bert", "t5": Path(tmp) / "t5"}
        for task in TRAIN_TASKS:
            if task in only or (task == "t5" and "decode" in only):
                save_hf(task, folders[task], args)
        for task in TRAIN_TASKS:
            if task in only:
                result[task] = bench_training(task, folders[task], args, device)
                if not args.no_memory:
                    result[task]["memory_mib"] = measure_memory(task, folders[task], args)
        if "decode" in only:
            result["decode"] = bench_decode(folders["t5"], args, device)
    if args.json:
        print(json.dumps(result))
        return
    print_report(result, args)


if __name__ == "__main__":
    main()
