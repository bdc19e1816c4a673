"""Generation with the pre-Transformer LMs: recurrent LMs (carried state), the NPLM (sliding context
window) and ELMo's forward LM, against full recomputation; batching, sampling, stopping; `lmlab generate`
on tiny pretrained LSTM and NPLM runs."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.generate import decode, generate_ids, generate_text
from lmlab.models import build_model, get_preset

V = 61
PRESETS = ["rnn-tiny", "lstm-tiny", "gru-tiny", "nplm-tiny", "elmo-tiny"]


def model_of(preset: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(get_preset(preset, vocab_size=V, **kw))
    with torch.no_grad():  # larger weights: peaked, varied distributions instead of near-uniform ones
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module", params=PRESETS)
def model(request, one_torch_thread) -> torch.nn.Module:
    return model_of(request.param)


def prompts(lengths=(3, 45, 7, 3)) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


def test_carried_state_gives_the_same_tokens_as_recomputation(model):
    ps = prompts()
    greedy = generate_ids(model, ps, 40, temperature=0)
    assert greedy == generate_ids(model, ps, 40, temperature=0, use_cache=False)
    assert len({tuple(row[len(p):]) for p, row in zip(ps, greedy)}) == len(ps)  # each row its own output
    sampled = generate_ids(model, ps, 30, temperature=1.0, top_k=20, seed=3)
    assert sampled == generate_ids(model, ps, 30, temperature=1.0, top_k=20, seed=3, use_cache=False)
    assert all(len(set(row[len(p):])) > 5 for p, row in zip(ps, sampled))  # varied, not one repeated token


def test_batched_prompts_of_different_lengths_equal_single_runs(model):
    ps = prompts()
    single = [generate_ids(model, [p], 25, temperature=0)[0] for p in ps]
    assert generate_ids(model, ps, 25, temperature=0) == single
    assert generate_ids(model, ps, 25, temperature=0, repetition_penalty=1.5) == \
        [generate_ids(model, [p], 25, temperature=0, repetition_penalty=1.5)[0] for p in ps]


def test_generate_method_is_generate_ids(model):
    ps = prompts((5, 2))
    assert generate_ids(model, ps, 12, temperature=0) == generate_ids(model, ps, 12, temperature=0)
    out = generate_ids(model, torch.tensor(ps[0]), 4, temperature=0)
    assert out.shape == (9,) and out[:5].tolist() == ps[0]


def test_seed_makes_sampling_reproducible(model):
    ps = prompts((4, 9))
    a = generate_ids(model, ps, 30, temperature=1.0, top_p=0.9, seed=7)
    assert a == generate_ids(model, ps, 30, temperature=1.0, top_p=0.9, seed=7)
    assert a != generate_ids(model, ps, 30, temperature=1.0, top_p=0.9, seed=8)
    assert generate_ids(model, ps, 30, temperature=1.0, top_k=1, seed=9) == \
        generate_ids(model, ps, 30, temperature=0)


def test_no_context_limit(model):
    long = prompts((3 * model.config.block_size,))
    out = generate_ids(model, long, model.config.block_size, temperature=0)
    assert out[0][: len(long[0])] == long[0] and len(out[0]) == 4 * model.config.block_size
    assert generate_ids(model, long, 5, temperature=0, truncate=True)[0][: len(long[0])] == long[0]


def test_eos_stop_and_on_token_end_rows(model):
    ps = prompts((3, 8))
    free = generate_ids(model, ps, 20, temperature=0)
    eos = free[0][3 + 4]
    out = generate_ids(model, torch.tensor([ps[0]]), 20, temperature=0, eos_id=eos)
    assert out[0, 3:].tolist() == free[0][3: 3 + free[0][3:].index(eos) + 1]
    stop = free[1][8 + 2: 8 + 4]
    rows = generate_ids(model, ps, 20, temperature=0, stop=[stop])
    assert rows[1][-2:] == stop and len(rows[1]) <= 8 + 4 and rows[1] == free[1][: len(rows[1])]
    seen: list[tuple[int, int]] = []
    decode(model, ps, 5, temperature=0, on_token=lambda r, t: seen.append((r, t)) or r == 0)
    assert [t for r, t in seen if r == 0] == free[0][3:4] and [t for r, t in seen if r == 1] == free[1][8:13]


def test_tensor_input_and_bad_input(model):
    ids = torch.tensor(prompts((6, 6)))
    out = generate_ids(model, ids, 10, temperature=0)
    assert out.shape == (2, 16) and torch.equal(out[:, :6], ids)
    assert torch.equal(generate_ids(model, ids[0], 10, temperature=0), out[0])
    with pytest.raises(LmlabError, match="vocabulary"):
        generate_ids(model, [[V + 2]], 5)
    with pytest.raises(LmlabError, match="empty"):
        generate_ids(model, [[]], 5)
    with pytest.raises(LmlabError, match="top_p"):
        generate_ids(model, [[1]], 5, top_p=0)


def test_generation_runs_in_eval_mode_and_restores_training(one_torch_thread):
    model = model_of("lstm-tiny", dropout_in=0.5, dropout_out=0.5)
    ps = prompts((5, 2))
    ref = generate_ids(model, ps, 15, temperature=0)
    model.train()
    assert generate_ids(model, ps, 15, temperature=0) == ref and model.training


def test_elmo_forward_lm_carries_its_state(one_torch_thread):
    for preset in ("elmo-tiny", "elmo-char-tiny"):
        model = model_of(preset) if preset == "elmo-tiny" else _char_elmo()
        ids = torch.tensor(prompts((9, 9)))
        whole = model(ids)
        first, state = model.forward_lm(ids[:, :4])
        rest, _ = model.forward_lm(ids[:, 4:], state)
        torch.testing.assert_close(torch.cat([first, rest], dim=1), whole)
        with pytest.raises(LmlabError, match="state"):
            model.forward_lm(ids[:1, 4:], state)
        assert generate_ids(model, ids.tolist(), 10, temperature=0) == \
            generate_ids(model, ids.tolist(), 10, temperature=0, use_cache=False)


def _char_elmo() -> torch.nn.Module:
    from lmlab.data.tokenizers import train_tokenizer

    tok = train_tokenizer("byte", [])
    torch.manual_seed(0)
    return build_model(get_preset("elmo-char-tiny", vocab_size=tok.vocab_size), tok).eval()


def test_models_that_cannot_generate_are_refused():
    with pytest.raises(LmlabError, match="cannot generate.*recurrent LMs"):
        generate_ids(torch.nn.Linear(3, 3), [[1, 2]], 3)


# ---------------------------------------------------------------- `lmlab generate` on pretrained runs
@pytest.fixture(scope="module")
def classic_runs(char_data, tmp_path_factory):
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("classic-runs")
    runs = {}
    for preset in ("lstm-tiny", "nplm-tiny"):
        run = root / preset
        r = run_cli("pretrain", "--model", preset, "--data", char_data.dir, "--out", run, "--max-steps", "40",
                    "--batch-size", "8", "--block-size", "32", "--lr", "1e-2", "--warmup-steps", "2",
                    env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr
        runs[preset] = run
    return runs


@pytest.mark.parametrize("preset", ["lstm-tiny", "nplm-tiny"])
def test_generate_cli_on_classic_runs(preset, classic_runs, cli, capsys, tmp_path, one_torch_thread):
    import lmlab
    from lmlab.cli import main

    run = classic_runs[preset]
    r = cli("generate", "--ckpt", run, "--prompt", "the quick ", "--max-new-tokens", "40",
            "--temperature", "0", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the quick ") and len(r.stdout.strip()) > len("the quick ") + 5
    assert "tokens/s" in r.stderr
    model, tok = lmlab.load(str(run))
    assert type(model).__name__ == ("RNNLM" if preset == "lstm-tiny" else "NPLM")
    ref = generate_text(model, tok, "the quick ", 40, temperature=0)[0]
    assert r.stdout == "the quick " + ref.text + "\n"
    # --json with a batch of prompts from a file: each row as if alone; seeded sampling reproducible
    (tmp_path / "p.txt").write_text("the quick \nbirds\n", encoding="utf-8")
    assert main(["generate", "--ckpt", str(run), "--prompt-file", str(tmp_path / "p.txt"),
                 "--max-new-tokens", "30", "--temperature", "0", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    single = [generate_text(model, tok, p, 30, temperature=0)[0].text for p in ("the quick ", "birds")]
    assert [c["text"] for c in got["completions"]] == single and got["new_tokens"] > 0
    args = ["generate", "--ckpt", str(run), "--prompt", "", "--max-new-tokens", "30", "--seed", "4", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)["completions"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["completions"] == first and first[0]["tokens"] > 0
