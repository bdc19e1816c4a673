"""The CUDA path of every model family, checked on a GPU machine (not part of CI).

For each preset: a few bf16-autocast training steps with the flash SDPA kernel forced where
the model's attention allows it (causal self-attention without a padding mask), then
tokens/s and peak GPU memory; then KV-cached decoding speed; then the CLI end to end
(`data prepare`, `pretrain --device cuda`, `eval`, `generate`) on Shakespeare when the
corpus is present (``LMLAB_DATA_DIR``). Prints one JSON line per check and exits non-zero
if any check failed.

    python benchmarks/device_check.py [--presets gpt2-tiny,llama-tiny,...] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PRESETS = "gpt2-tiny,llama-tiny,llama-small,bert-small,t5-tiny,bart-tiny,transformer-tiny"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings of asynchronous CUDA kernels)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device: torch.device) -> int | None:
    """Return the peak allocated device memory in MiB (CUDA only)."""
    return round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None


def report(**fields) -> None:
    """Print one check's result as a JSON line."""
    print(json.dumps(fields), flush=True)


def batch_for(model: torch.nn.Module, B: int, T: int, device: torch.device) -> tuple[dict, bool]:
    """Return ``(kwargs of a loss-returning forward, whether flash attention can be forced)``."""
    from lmlab.models.registry import family_of

    arch = family_of(model).arch
    V = model.config.vocab_size
    ids = torch.randint(0, V, (B, T), device=device)
    if arch == "encoder":
        labels = torch.full_like(ids, -100)
        labels[:, ::7] = ids[:, ::7]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "targets": labels}, False
    if arch == "encdec":
        return {"input_ids": ids, "decoder_input_ids": ids, "targets": ids}, False
    return {"idx": ids[:, :-1], "targets": ids[:, 1:]}, True


def train_check(preset: str, steps: int, B: int, T: int, device: torch.device) -> None:
    """Time bf16-autocast training steps of ``preset``; report tokens/s, peak memory, loss."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lmlab.device import autocast, resolve_precision
    from lmlab.models.registry import build_model, get_preset
    from lmlab.train.optim import build_adamw

    cfg = get_preset(preset)
    T = min(T, getattr(cfg, "block_size", T) or T)
    model = build_model(cfg).to(device).train()
    opt = build_adamw(model, lr=1e-4, weight_decay=0.1, device=device)
    kwargs, flash = batch_for(model, B, T, device)
    precision = resolve_precision(device, "auto")
    backends = [SDPBackend.FLASH_ATTENTION] if flash else [SDPBackend.FLASH_ATTENTION,
                                                              SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    with sdpa_kernel(backends):
        for i in range(steps + 3):
            sync(device)
            t = time.perf_counter()
            with autocast(device, precision):
                loss = model(**kwargs)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            if i >= 3:
                times.append(time.perf_counter() - t)
            losses.append(loss.item())
    step = sorted(times)[len(times) // 2]
    report(check="train", preset=preset, precision=precision, flash_forced=flash, batch=B, seq=T,
           params=model.num_params(), tokens_per_s=round(B * T / step), step_ms=round(step * 1000, 2),
           peak_mib=peak_mib(device), loss_first=round(losses[0], 4),
           loss_last=round(losses[-1], 4), ok=all(map(lambda x: x == x, losses)) and losses[-1] < losses[0])


def decode_check(preset: str, device: torch.device, n: int = 128) -> None:
    """Time KV-cached greedy decoding of a decoder preset in bf16."""
    from lmlab.generate import generate_ids
    from lmlab.models.registry import build_model, get_preset

    model = build_model(get_preset(preset)).to(device, torch.bfloat16).eval()
    n = min(n, model.config.block_size - 16)
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), device=device)
    generate_ids(model, prompt, 8, temperature=0.0)
    sync(device)
    t = time.perf_counter()
    out = generate_ids(model, prompt, n, temperature=0.0)
    sync(device)
    dt = time.perf_counter() - t
    report(check="decode", preset=preset, new_tokens=n, tokens_per_s=round(n / dt, 1),
           ok=len(out[0]) >= 16 + n)


def cli_check(device: torch.device) -> None:
    """Run data prepare, pretrain on cuda, eval and generate through the real CLI."""
    work = Path(tempfile.mkdtemp())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lmlab = [sys.executable, "-c", "import sys; from lmlab.cli import entrypoint; sys.exit(entrypoint())"]
    dev, data, run = device.type, str(work / "data"), str(work / "run")
    n_steps = "200" if dev == "cuda" else "5"
    steps = [
        ["data", "prepare", "--corpus", "shakespeare", "--vocab-size", "2048", "--out", data],
        ["pretrain", "--model", "llama-tiny", "--data", data, "--out", run, "--device", dev,
         "--max-steps", n_steps, "--no-progress", "--json"],
        ["eval", "--ckpt", run, "--data", data, "--device", dev, "--json"],
        ["generate", "--ckpt", run, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--device", dev,
         "--seed", "1"],
    ]
    for args in steps:
        t = time.perf_counter()
        p = subprocess.run(lmlab + args, env=env, capture_output=True, text=True)
        report(check="cli", command=" ".join(args[:2]), rc=p.returncode,
               seconds=round(time.perf_counter() - t, 1), tail=(p.stdout + p.stderr)[-600:],
               ok=p.returncode == 0)
        if p.returncode:
            return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default=DEFAULT_PRESETS)
    ap.add_argument("--decode-presets", default="gpt2-tiny,llama-small")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--no-cli", action="store_true")
    ap.add_argument("--device", default="cuda", help="cuda (the point), or cpu for a dry run of the script")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; this script checks the GPU path (--device cpu: a dry run)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    report(check="device", name=name, torch=torch.__version__, ok=True)
    failed = 0
    from lmlab.models.registry import preset_names

    known = set(preset_names())
    train_args = (args.steps, args.batch_size, args.seq, device)
    checks = [(train_check, p, train_args) for p in args.presets.split(",")]
    checks += [(decode_check, p, (device,)) for p in args.decode_presets.split(",")]
    for fn, preset, rest in checks:
        if preset not in known:
            report(check=fn.__name__, preset=preset, ok=None, skipped="no such preset here")
            continue
        try:
            fn(preset, *rest)
        except Exception as e:  # report and go on: one family's failure must not hide the others
            failed += 1
            report(check=fn.__name__, preset=preset, ok=False, error=f"{type(e).__name__}: {e}",
                   where=traceback.format_exc()[-800:])
    if not args.no_cli:
        cli_check(device)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
