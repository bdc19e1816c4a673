"""How closely our GGUF exports agree with the run they came from, read by other programs.

For each of ``DIR/NAME-{f32,f16,q8_0}.gguf`` (written by ``lmlab export gguf``): transformers' GGUF
loader's logits against lmlab's on one text (largest difference, share of equal argmaxes), and,
when llama-cpp-python is installed, how many greedy tokens llama.cpp produces before its first
difference from ``lmlab generate`` on a few prompts. Also whether transformers' tokenizer rebuilt
from the file gives our ids. Prints a Markdown table.

    python benchmarks/gguf_agreement.py --ckpt runs/lm-movies --dir gguf --name lm-movies
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

TEXT = "A gorgeous, witty, seductive movie that never loses its nerve."
PROMPTS = ["The movie is", "A film that", "This is the best", "An awful, boring"]


def llama_cpp_prefix(path: Path, prompts: list[list[int]], ours: list[list[int]]) -> tuple[int, int] | None:
    """Return (greedy tokens equal before the first difference, tokens compared); None without
    llama_cpp."""
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    same = total = 0
    for p, o in zip(prompts, ours):
        llm.reset()
        got: list[int] = []
        for t in llm.generate(p, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            got.append(int(t))
            if len(got) == len(o):
                break
        same += next((i for i, (a, b) in enumerate(zip(o, got)) if a != b), len(o))
        total += len(o)
    return same, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--new-tokens", type=int, default=32)
    a = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lmlab
    from lmlab.generate.decode import decode

    model, tok = lmlab.load(a.ckpt)
    ids = torch.tensor([[tok.eot_id] + tok.encode(TEXT)])
    prompts = [[tok.eot_id] + tok.encode(p) for p in PROMPTS]
    ours = [decode(model, [p], a.new_tokens, temperature=0)[0] for p in prompts]
    with torch.no_grad():
        logits = model(ids)
    print(f"| file | size | max \\|logit difference\\| (transformers) | same argmax ({ids.shape[1]} "
          "positions) | llama.cpp greedy tokens equal before the first difference |")
    print("|---|---:|---:|---:|---:|")
    for dtype in ("f32", "f16", "q8_0"):
        name = f"{a.name}-{dtype}.gguf"
        path = Path(a.dir) / name
        hf = AutoModelForCausalLM.from_pretrained(a.dir, gguf_file=name).eval()
        with torch.no_grad():
            theirs = hf(ids).logits
        agree = (logits.argmax(-1) == theirs.argmax(-1)).float().mean().item()
        lc = llama_cpp_prefix(path, prompts, ours)
        lc_text = f"{lc[0]}/{lc[1]}" if lc else "(llama-cpp-python not installed)"
        diff = float((logits - theirs).abs().max())
        print(f"| {dtype} | {path.stat().st_size / 2**20:.2f} MiB | {diff:.1e} | {agree:.1%} | {lc_text} |")
    hf_tok = AutoTokenizer.from_pretrained(a.dir, gguf_file=f"{a.name}-f32.gguf")
    same = hf_tok(TEXT, add_special_tokens=False)["input_ids"] == tok.encode(TEXT)
    print(f"\ntransformers' tokenizer from the file gives lmlab's ids: {same}")


if __name__ == "__main__":
    main()
