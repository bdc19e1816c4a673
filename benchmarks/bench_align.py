"""Alignment training speed: lmlab's DPO and PPO against TRL's ``DPOTrainer`` and PPO trainer, and
rollout generation (lmlab's ``decode`` against Hugging Face ``generate``), in one process.

Both sides start from the SAME tiny model: a random LLaMA built by lmlab with a BPE tokenizer trained
on the task's text, written as a Hugging Face folder by ``lmlab export hf``'s function. TRL loads that
folder with ``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification`` and its tokenizer with
``AutoTokenizer``; lmlab loads it with ``lmlab.load`` as its commands do. The task is synthetic text
of the sentiment task's shape (short review prefixes; preference pairs of two continuations); only
the shapes matter for speed, and both sides see the same ones.

- DPO: one optimizer step on ``--dpo-batch`` pairs (prompt ``--prompt-len`` tokens at most, each
  response ``--response-len``), sigmoid loss, beta 0.1, reference log-probs precomputed once before
  training on both sides (TRL's ``precompute_ref_log_probs``; lmlab always precomputes), AdamW.
- PPO: one iteration = rollouts of ``--ppo-batch`` prompts (``--response-len`` new tokens at
  temperature 1, stop at end-of-text), the reference, value and reward passes, then ``--ppo-epochs``
  passes over the batch, one optimizer step per minibatch of ``--ppo-minibatch`` rollouts. The reward
  model and the value model are random scalar heads on the same backbone (TRL:
  ``AutoModelForSequenceClassification`` of the folder; lmlab: a ``lmlab reward train`` run folder
  holding the same backbone), fixed KL coefficient 0.05. TRL 1.12.0 is the last release with a PPO
  trainer (``trl.experimental.ppo``).
- Rollouts: ``--ppo-batch`` left-padded prompts, ``--response-len`` new tokens sampled at temperature
  1 (no early stop, so both make the same number of tokens); tokens/s of new tokens, fp32.

Training runs at each ``--precision`` on both sides: fp32, and bf16 where the CPU has it (lmlab's
``--precision bf16``: autocast; TRL's ``bf16=True``, its default: autocast through its Accelerator;
TRL's PPO trainer builds its own Accelerator, which ignores the flag, so the benchmark sets the
``ACCELERATE_MIXED_PRECISION`` variable that Accelerator reads; both trainers' precision is checked).
TRL's PPO loop calls ``gc.collect()`` twice per iteration; the time it spends there is reported.

Each training mode runs its own real training loop (TRL's ``Trainer.train``; lmlab's ``dpo``/``rlhf``
through the one Trainer) for ``--steps`` steps per round, the modes taking turns round after round
(interleaved, so the noise of a shared machine hits all alike). A step's time is the wall time
between the ends of consecutive steps (TRL: ``on_step_end`` callbacks; lmlab: the ``time`` of each
record of metrics.jsonl, logged every step), so loading, tokenising and the reference precompute are
not counted; the first step of every run (warm-up) and the last (lmlab's Trainer validates after it)
are not timed, on both sides alike. Each run starts after a ``gc.collect()``. Speeds are from the
median step over all rounds, with the min-max of the per-round ratios (benchmarks/timing.py's
``summarise``).

    python benchmarks/bench_align.py [--rounds 3] [--steps 8] [--precision fp32 --precision bf16]
                                     [--only dpo|ppo|rollout] [--threads 0] [--json] [--out FILE]

The defaults give the README's table: the shape of the lab's sentiment-task policy with the default
batches of ``lmlab dpo`` and ``lmlab rlhf``; ``--quick`` shrinks everything for a smoke run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from timing import ratio, round_robin, summarise

COMMON = ("good bad great awful film movie plot actor story scene music boring funny dull moving "
          "brilliant weak strong script ending cast slow fast love hate best worst truly quite very "
          "rather simply the a an and but or of to in it is was this that with for on as").split()
SYLLABLES = "ba ko ri mu te la sen dor vi qua pel tra mon zu fi gar nel os un ex".split()


def vocabulary(seed: int, n: int = 4000) -> list[str]:
    """The task's words: common review words, often, and about ``n`` made-up words from syllables, so
    that a BPE tokenizer of about ``n`` tokens fills up with merges (as real text would)."""
    rng = random.Random(seed)
    made = {"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(n)}
    return COMMON * 20 + sorted(made)


@dataclass
class Task:
    """The shared model and data: ``run`` (lmlab run folder), ``hf`` (its HF export), prompts and pairs."""

    run: Path
    hf: Path
    prompts: list[str]
    pairs: list[dict[str, str]]
    root: Path
    vocab: int
    reward: Path | None = None

    @property
    def pairs_file(self) -> Path:
        return self.root / "pairs.jsonl"

    @property
    def prompts_file(self) -> Path:
        return self.root / "prompts.txt"


def _text(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choice(words) for _ in range(n))


def make_task(root: Path, args: argparse.Namespace) -> Task:
    """Train the tokenizer, build the random LLaMA, export it to HF, and make prompts and pairs."""
    from lmlab.data.tokenizers import train_tokenizer
    from lmlab.interop.hf import export_hf
    from lmlab.models.registry import build_model, get_preset, save_model

    rng = random.Random(args.seed)
    words = vocabulary(args.seed, args.vocab)
    corpus = [_text(rng, words, rng.randint(5, 60)) for _ in range(4000)]
    tok = train_tokenizer("bpe", iter(corpus), vocab_size=args.vocab, min_frequency=1)
    torch.manual_seed(args.seed)
    model = build_model(get_preset("llama-small", vocab_size=tok.vocab_size, d_model=args.d_model,
                                   n_layer=args.layers, n_head=args.heads, n_kv_heads=args.kv_heads,
                                   block_size=256, tie_embeddings=False))
    run = root / "run"
    run.mkdir()
    save_model(model, run / "model.safetensors")
    tok.save(run / "tokenizer.json")
    hf = export_hf(model, root / "hf", tokenizer_dir=run)

    def cut(text: str, n: int) -> str:
        ids = tok.encode(text)[:n]
        return tok.decode(ids)

    prompts = [cut(_text(rng, words, rng.randint(2, 8)), args.prompt_len) for _ in range(256)]
    pairs = []
    for p in prompts:
        chosen = cut(_text(rng, words, 2 * args.response_len), args.response_len)
        rejected = cut(_text(rng, words, 2 * args.response_len), args.response_len)
        if chosen != rejected:
            pairs.append({"prompt": p, "chosen": " " + chosen, "rejected": " " + rejected})
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in pairs))
    (root / "prompts.txt").write_text("\n".join(prompts) + "\n")
    return Task(run=run, hf=hf, prompts=prompts, pairs=pairs, root=root, vocab=tok.vocab_size)


class StepClock:
    """A TRL/transformers callback that notes the wall time at the end of each step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        clock = self
        self.ends: list[float] = []

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
                clock.ends.append(time.perf_counter())

        self.callback = _Callback()

    def step_seconds(self) -> list[float]:
        """Seconds between consecutive step ends (the first step, warm-up, has no predecessor)."""
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


def _hf_tokenizer(task: Task):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(task.hf)
    tok.padding_side = "left"
    return tok


def _trl_common(tmp: str, args: argparse.Namespace, batch: int, steps: int, precision: str) -> dict:
    return dict(output_dir=tmp, per_device_train_batch_size=batch, learning_rate=1e-5, max_steps=steps,
                logging_steps=10_000, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
                bf16=precision == "bf16", dataloader_num_workers=0, seed=args.seed)


def trl_dpo(task: Task, args: argparse.Namespace, steps: int, precision: str) -> list[float]:
    """Run TRL's DPOTrainer for ``steps`` steps; return the step seconds after the first."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(task.hf, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(task.hf, dtype=torch.float32)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(**_trl_common(tmp, args, args.dpo_batch, steps, precision), beta=0.1,
                           loss_type=["sigmoid"], precompute_ref_log_probs=True,
                           max_length=args.prompt_len + args.response_len + 4)
        trainer = DPOTrainer(model=model, ref_model=ref, args=config,
                             train_dataset=Dataset.from_list(task.pairs),
                             processing_class=_hf_tokenizer(task), callbacks=[clock.callback])
        assert trainer.accelerator.mixed_precision == ("bf16" if precision == "bf16" else "no")
        trainer.train()
    return clock.step_seconds()


class GcClock:
    """Times the ``gc.collect()`` calls TRL's PPO loop makes (two per iteration) while it is entered."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.wall = 0.0

    def __enter__(self) -> GcClock:
        self._collect = gc.collect
        self._t0 = time.perf_counter()

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return self._collect(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1

        gc.collect = timed
        return self

    def __exit__(self, *exc) -> None:
        gc.collect = self._collect
        self.wall += time.perf_counter() - self._t0


GC = GcClock()  # one for the whole benchmark: TRL PPO's total time in gc.collect


def trl_ppo(task: Task, args: argparse.Namespace, steps: int, precision: str) -> list[float]:
    """Run TRL's PPO trainer for ``steps`` iterations; return the iteration seconds after the first."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = _hf_tokenizer(task)
    policy = AutoModelForCausalLM.from_pretrained(task.hf, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(task.hf, dtype=torch.float32)
    torch.manual_seed(args.seed)
    heads = [AutoModelForSequenceClassification.from_pretrained(task.hf, num_labels=1, dtype=torch.float32)
             for _ in range(2)]
    for h in heads:
        h.config.pad_token_id = tok.pad_token_id
    queries = Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in task.prompts]})
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        common = _trl_common(tmp, args, args.ppo_batch, steps, precision)
        common.pop("max_steps")
        # the whole rollout batch per device, cut into minibatches: one optimizer step per minibatch
        config = PPOConfig(**common, total_episodes=steps * args.ppo_batch,
                           num_mini_batches=args.ppo_batch // args.ppo_minibatch,
                           num_ppo_epochs=args.ppo_epochs, response_length=args.response_len,
                           temperature=1.0, stop_token="eos", kl_coef=0.05, num_sample_generations=0,
                           local_rollout_forward_batch_size=args.ppo_batch)
        # TRL's PPO trainer makes its own Accelerator, which ignores the bf16 flag; the environment
        # variable it reads gives it the bf16 autocast asked for (its prepared model's forwards).
        mixed = os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
        if precision == "bf16":
            os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
        try:
            trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref,
                                 reward_model=heads[0], value_model=heads[1], train_dataset=queries,
                                 eval_dataset=queries.select(range(args.ppo_batch)),
                                 callbacks=[clock.callback])
        finally:
            os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
            if mixed is not None:
                os.environ["ACCELERATE_MIXED_PRECISION"] = mixed
        assert trainer.accelerator.mixed_precision == ("bf16" if precision == "bf16" else "no")
        with GC:
            trainer.train()
    return clock.step_seconds()


def step_seconds(out: Path, every: int = 1) -> list[float]:
    """Wall seconds of each step of an lmlab run (of each ``every`` steps: a PPO iteration) from the
    ``time`` of its metrics.jsonl records (logged every step), the first one dropped (no predecessor)."""
    from lmlab.train.log import read_metrics

    ends = {r["step"]: r["time"] for r in read_metrics(out) if "loss" in r}
    marks = [ends[s] for s in sorted(ends) if s % every == 0]
    return [b - a for a, b in zip(marks, marks[1:])]


def ours_dpo(task: Task, args: argparse.Namespace, steps: int, precision: str) -> list[float]:
    """Run lmlab's DPO (``lmlab dpo``'s function) for ``steps`` steps; return the timed step seconds."""
    from lmlab.align.dpo import DPOConfig, dpo

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dpo"
        dpo(DPOConfig(ckpt=task.hf, data=str(task.pairs_file), out=out, beta=0.1, loss="sigmoid",
                      batch_size=args.dpo_batch, max_len=args.prompt_len + args.response_len + 4,
                      max_steps=steps, log_interval=1, eval_interval=0, precision=precision, device="cpu",
                      progress=False, seed=args.seed))
        return step_seconds(out)


def reward_run(task: Task, args: argparse.Namespace) -> Path:
    """A reward-model run folder for lmlab's PPO (``lmlab reward train`` for one step on the task's
    pairs: the export's backbone with a scalar head), made once."""
    from lmlab.align.reward import RewardConfig, train_reward

    if task.reward is None:
        task.reward = task.root / "rm"
        train_reward(RewardConfig(ckpt=task.hf, data=str(task.pairs_file), out=task.reward, max_steps=1,
                                  batch_size=4, precision="fp32", device="cpu", progress=False,
                                  seed=args.seed))
    return task.reward


def ours_ppo(task: Task, args: argparse.Namespace, steps: int, precision: str) -> list[float]:
    """Run lmlab's PPO (``lmlab rlhf --algo ppo``'s function) for ``steps`` iterations; return the
    iteration seconds after the first."""
    from lmlab.align.rlhf import RLHFConfig, rlhf

    rm = reward_run(task, args)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ppo"
        cfg = RLHFConfig(algo="ppo", policy=task.hf, reward=str(rm), prompts=str(task.prompts_file), out=out,
                         rollouts=steps, batch_size=args.ppo_batch, minibatch_size=args.ppo_minibatch,
                         ppo_epochs=args.ppo_epochs, max_new_tokens=args.response_len, temperature=1.0,
                         beta=0.05, value_init="reward", log_interval=1, precision=precision, device="cpu",
                         progress=False, seed=args.seed)
        rlhf(cfg)
        return step_seconds(out, cfg.steps_per_rollout)


def rollouts(task: Task, args: argparse.Namespace) -> dict:
    """New tokens/s of HF ``generate`` (sampling, its dynamic cache) and lmlab's ``decode`` on the same
    left-padded prompts; both make ``--response-len`` tokens per row."""
    from transformers import AutoModelForCausalLM

    import lmlab
    from lmlab.generate.decode import decode

    tok = _hf_tokenizer(task)
    hf = AutoModelForCausalLM.from_pretrained(task.hf, dtype=torch.float32).eval()
    ours, our_tok = lmlab.load(str(task.hf))
    ours.eval()
    prompts = task.prompts[:args.ppo_batch]
    enc = tok(prompts, return_tensors="pt", padding=True)
    our_prompts = [[our_tok.eot_id] + our_tok.encode(p) for p in prompts]
    n = args.response_len

    def run_hf(i: int) -> None:
        torch.manual_seed(i)
        with torch.inference_mode():
            hf.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=1.0, top_k=0,
                        top_p=1.0, pad_token_id=tok.pad_token_id)

    def run_ours(i: int) -> None:
        decode(ours, our_prompts, n, temperature=1.0, seed=i)

    fns = {"hf-generate": run_hf, "ours-decode": run_ours}
    for fn in fns.values():
        fn(0)  # warm-up
    s = summarise(round_robin(fns, args.rollout_repeats, args.rounds, torch.device("cpu")), len(prompts) * n)
    return {"tokens_per_s": {k: round(v, 1) for k, v in s["speed"].items()},
            "ratio": ratio(s, "ours-decode", "hf-generate")}


def versions() -> dict[str, str]:
    """The versions of the libraries compared."""
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The default shape is the lab's sentiment-task policy (runs/lm-movies: LLaMA d=128, 4 layers, 4 heads,
    # GQA 2, vocabulary ~8k) with lmlab dpo's and lmlab rlhf's default batches.
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=8, help="prompt tokens at most")
    ap.add_argument("--response-len", type=int, default=24, help="response tokens (DPO) / new tokens (PPO)")
    ap.add_argument("--dpo-batch", type=int, default=8, help="preference pairs per DPO step")
    ap.add_argument("--ppo-batch", type=int, default=16, help="rollouts per PPO iteration")
    ap.add_argument("--ppo-minibatch", type=int, default=4, help="rollouts per PPO optimizer step")
    ap.add_argument("--ppo-epochs", type=int, default=2, help="passes over each rollout batch")
    ap.add_argument("--steps", type=int, default=8,
                    help="training steps (PPO: iterations) per mode per round; the first and last are "
                         "not timed")
    ap.add_argument("--rollout-repeats", type=int, default=4, help="timed rollouts per mode per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=("dpo", "ppo", "rollout"), action="append",
                    help="run only these parts (repeatable)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), action="append",
                    help="training precision of both sides (repeatable; default: fp32, and bf16 where the "
                         "CPU has it): lmlab's --precision, TRL's bf16 flag (its default is bf16=True)")
    ap.add_argument("--quick", action="store_true", help="a tiny shape and few steps: a smoke run")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    if args.quick:
        args.d_model, args.layers, args.heads, args.kv_heads, args.vocab = 64, 2, 4, 4, 512
        args.response_len, args.prompt_len, args.steps, args.rounds = 12, 8, 4, 1
        args.dpo_batch, args.ppo_batch, args.ppo_minibatch, args.ppo_epochs = 4, 4, 2, 2
        args.rollout_repeats = 2
    if args.ppo_batch % args.ppo_minibatch:
        ap.error("--ppo-minibatch must divide --ppo-batch")
    if args.steps < 4:
        ap.error("--steps must be at least 4 (the first and last steps are not timed)")
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.only or ["dpo", "ppo", "rollout"]
    if not args.precision:
        from lmlab.device import resolve_precision

        has_bf16 = resolve_precision(torch.device("cpu"), "auto") == "bf16"
        args.precision = ["fp32"] + (["bf16"] if has_bf16 else [])
    raise SystemExit(run(args, parts))


def run(args: argparse.Namespace, parts: list[str]) -> int:
    """Run the asked parts; print the table (or JSON); return the exit status."""
    with tempfile.TemporaryDirectory() as tmp:
        task = make_task(Path(tmp), args)
        args.vocab = task.vocab  # the tokenizer's size (a small corpus may give fewer merges than asked)
        shape = ("vocab", "d_model", "layers", "heads", "kv_heads", "prompt_len", "response_len", "dpo_batch",
                 "ppo_batch", "ppo_minibatch", "ppo_epochs", "steps", "rounds", "precision")
        result: dict = {"versions": versions(), "threads": torch.get_num_threads(),
                        "shape": {k: getattr(args, k) for k in shape}}
        runners = {"trl-dpo": trl_dpo, "ours-dpo": ours_dpo, "trl-ppo": trl_ppo, "ours-ppo": ours_ppo}
        modes = [(f"{m}-{p}", m, p) for kind in ("dpo", "ppo") if kind in parts for p in args.precision
                 for m in (f"trl-{kind}", f"ours-{kind}")]
        times: dict[str, list[list[float]]] = {name: [] for name, _, _ in modes}
        for _ in range(args.rounds):
            for name, m, p in modes:
                gc.collect()  # each run starts without the garbage of the ones before
                # the last step is not timed: see the module docstring
                times[name].append(runners[m](task, args, args.steps, p)[:-1])
        if modes:
            s = summarise(times, 1)
            result["steps_per_s"] = {m: round(v, 3) for m, v in s["speed"].items()}
            if GC.calls:  # how much of TRL's PPO training loop its gc.collect() calls take
                result["trl_ppo_gc"] = {"calls": GC.calls, "share_of_train": round(GC.seconds / GC.wall, 3),
                                        "seconds_per_call": round(GC.seconds / GC.calls, 4),
                                        "heap_objects": len(gc.get_objects())}
            result["ratios"] = {f"{kind}-{p}": ratio(s, f"ours-{kind}-{p}", f"trl-{kind}-{p}")
                                for kind in ("dpo", "ppo") for p in args.precision
                                if f"ours-{kind}-{p}" in s["speed"]}
        if "rollout" in parts:
            result["rollout"] = rollouts(task, args)
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text + "\n")
    print(text if args.json else table(result))
    return 0


def table(r: dict) -> str:
    """The README's markdown table of ``r``."""
    v, sh = r["versions"], r["shape"]
    rows = [f"| | TRL {v['trl']} (transformers {v['transformers']}) | lmlab | "
            "lmlab / TRL (min-max over rounds) |",
            "|---|---:|---:|---:|"]

    def row(name: str, a: float, b: float, q: dict) -> None:
        rows.append(f"| {name} | {a:,.2f} | {b:,.2f} | **{q['median']:.2f}x** "
                    f"({q['min']:.2f}-{q['max']:.2f}) |")

    sp, e = r.get("steps_per_s", {}), sh["ppo_epochs"] * sh["ppo_batch"] // sh["ppo_minibatch"]
    for key, q in r.get("ratios", {}).items():
        kind, p = key.split("-")
        a, b = sp[f"trl-{key}"], sp[f"ours-{key}"]
        if kind == "dpo":
            row(f"DPO optimizer steps/s ({sh['dpo_batch']} pairs), {p}", a, b, q)
        else:
            row(f"PPO iterations/s ({sh['ppo_batch']} rollouts, {e} updates), {p}", a, b, q)
            row(f"PPO optimizer steps/s, {p}", e * a, e * b, q)
    if "rollout" in r:
        t = r["rollout"]["tokens_per_s"]
        rows.append(f"| rollout tokens/s (HF generate vs lmlab decode), fp32 | {t['hf-generate']:,.0f} | "
                    f"{t['ours-decode']:,.0f} | **{r['rollout']['ratio']['median']:.2f}x** "
                    f"({r['rollout']['ratio']['min']:.2f}-{r['rollout']['ratio']['max']:.2f}) |")
    head = (f"LLaMA d={sh['d_model']}, {sh['layers']} layers, {sh['heads']} heads, vocab {sh['vocab']}; "
            f"prompts <= {sh['prompt_len']} tokens, responses {sh['response_len']}; {r['threads']} threads, "
            f"torch {v['torch']}; {sh['rounds']} rounds x {sh['steps']} steps")
    out = head + "\n\n" + "\n".join(rows)
    if "trl_ppo_gc" in r:
        g = r["trl_ppo_gc"]
        out += (f"\n\nTRL's PPO loop spent {g['share_of_train']:.0%} of its training time in the two "
                f"gc.collect() calls it makes per iteration ({g['seconds_per_call']:.3f} s each, "
                f"{g['heap_objects']:,} objects on the heap).")
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
