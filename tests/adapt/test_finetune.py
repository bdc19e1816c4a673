"""End to end through the real CLI: ``lmlab finetune`` (classify, regress, lm; head and full) and
``lmlab predict`` on tiny pretrained runs made in tmp_path, on a fake archive of the sentiment sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lmlab
from lmlab.cli import main
from lmlab.data.labelled import get_labelled
from lmlab.data.prepare import prepare
from lmlab.models.heads import SequenceClassifier
from lmlab.models.registry import build_model, get_preset, save_model
from lmlab.train.log import read_metrics
from tests.labelled_fixtures import fake_sentiment_archive

COMMON = ["--device", "cpu", "--precision", "fp32", "--no-progress", "--batch-size", "8"]


pytestmark = pytest.mark.usefixtures("sentiment_env")  # tests/adapt/conftest.py


@pytest.fixture(scope="module")
def runs(archive, tmp_path_factory) -> dict[str, Path]:
    """'Pretrained' runs (random tiny models with the char tokenizer of the movies' training text):
    a GPT-2, an LSTM, a BERT and an NPLM (a family with no head)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LMLAB_SENTIMENT_ARCHIVE", str(archive))
    root = tmp_path_factory.mktemp("runs")
    try:
        prepare("sentiment-movies", root / "prep", kind="char")
    finally:
        mp.undo()
    vocab = json.loads((root / "prep" / "meta.json").read_text())["vocab_size"]
    shapes = {
        "gpt2": ("gpt2-tiny", {"n_layer": 1, "d_model": 32, "n_head": 2, "block_size": 64}),
        "lstm": ("lstm-tiny", {}),
        "bert": ("bert-micro", {"n_layer": 1, "d_model": 32, "n_head": 2, "block_size": 64}),
        "nplm": ("nplm-tiny", {}),
    }
    out = {}
    for kind, (preset, extra) in shapes.items():
        torch.manual_seed(0)
        run = root / kind
        run.mkdir()
        save_model(build_model(get_preset(preset, vocab_size=vocab, **extra)), run)
        (run / "tokenizer.json").write_bytes((root / "prep" / "tokenizer.json").read_bytes())
        out[kind] = run
    return out


def finetune(*args: str) -> int:
    return main(["finetune", *COMMON, *map(str, args)])


def test_classify_full_writes_the_run_and_reports_every_figure(runs, tmp_path, capsys):
    out = tmp_path / "ft"
    assert (
        finetune(
            "--ckpt",
            runs["gpt2"],
            "--data",
            "sentiment-movies",
            "--out",
            out,
            "--epochs",
            "1",
            "--lr",
            "3e-3",
            "--json",
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    corpus = get_labelled("sentiment-movies")
    n_train = len(corpus.examples("train"))
    assert r["step"] == -(-n_train // 8)  # one epoch of batches of 8
    assert r["trainable_share"] == 1.0 and r["trainable_params"] == r["total_params"] > 0
    assert r["test"]["n"] == len(corpus.examples("test"))
    assert 0 <= r["test"]["accuracy"] <= 1 and 0 <= r["test"]["macro_f1"] <= 1
    assert sum(map(sum, r["test"]["confusion"])) == r["test"]["n"] and len(r["test"]["confusion"]) == 2
    assert set(r["val"]) == {"loss", "accuracy", "macro_f1"}
    assert r["elapsed_s"] > 0 and r["checkpoint_bytes"] == (out / "model.safetensors").stat().st_size
    for name in ("config.yaml", "model.safetensors", "tokenizer.json", "metrics.jsonl", "results.json"):
        assert (out / name).is_file()
    assert "val_accuracy" in read_metrics(out)[-1]
    model, tokenizer = lmlab.load(str(out))
    assert isinstance(model, SequenceClassifier) and model.config.labels == ["negative", "positive"]
    assert tokenizer is not None

    # lmlab predict: the test split through the CLI gives the same test figures
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(
        "".join(
            json.dumps({"text": e.text, "label": corpus.label_names[e.label]}) + "\n"
            for e in corpus.examples("test")
        )
    )
    preds = tmp_path / "preds.jsonl"
    assert (
        main(
            [
                "predict",
                "--ckpt",
                str(out),
                "--data",
                str(test_file),
                "--out",
                str(preds),
                "--device",
                "cpu",
                "--precision",
                "fp32",
                "--json",
            ]
        )
        == 0
    )
    p = json.loads(capsys.readouterr().out)
    assert p["n"] == r["test"]["n"] and p["metrics"]["accuracy"] == pytest.approx(
        r["test"]["accuracy"], abs=1e-6
    )
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == p["n"] and set(rows[0]["probs"]) == {"negative", "positive"}
    assert abs(sum(rows[0]["probs"].values()) - 1) < 1e-4


def test_head_method_trains_only_the_head(runs, tmp_path, capsys):
    out = tmp_path / "head"
    assert (
        finetune(
            "--ckpt",
            runs["lstm"],
            "--data",
            "sentiment-tweets",
            "--out",
            out,
            "--max-steps",
            "4",
            "--method",
            "head",
            "--lr",
            "1e-2",
            "--json",
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    d_hidden = 48  # lstm-tiny: concat pooling gives 3 x 48 features, 2 classes; ULMFiT's batch norm first
    assert r["trainable_params"] == 2 * 3 * d_hidden + 3 * d_hidden * 2 + 2 and r["trainable_share"] < 0.2
    before = load_file(str(runs["lstm"] / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    for name, tensor in before.items():
        assert torch.equal(after[f"backbone.{name}"], tensor), name
    assert not torch.equal(after["head.2.weight"], torch.zeros_like(after["head.2.weight"]))


def test_regress_on_an_encoder_and_predict_scores(runs, tmp_path, capsys):
    out = tmp_path / "reg"
    assert (
        finetune(
            "--ckpt",
            runs["bert"],
            "--data",
            "sentiment-nyt",
            "--task",
            "regress",
            "--out",
            out,
            "--max-steps",
            "3",
            "--json",
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    corpus = get_labelled("sentiment-nyt")
    assert r["test"]["n"] == len(corpus.examples("test", "regress")) > len(corpus.examples("test"))
    assert {"mse", "mae", "pearson"} <= set(r["test"]) and set(r["val"]) == {"loss", "mae", "pearson"}
    texts = tmp_path / "t.txt"
    texts.write_text("the film was good\n\na bad plot\n")
    assert main(["predict", "--ckpt", str(out), "--data", str(texts), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].endswith("\ta bad plot")
    score = float(lines[0].split("\t")[0])  # a signed number, then the text
    assert lines[0] == f"{score:+.3f}\tthe film was good"


def test_resume_continues_exactly(runs, tmp_path, capsys):
    args = ["--ckpt", runs["gpt2"], "--data", "sentiment-amazon", "--epochs", "0.5", "--head-dropout", "0.3"]
    assert finetune(*args, "--out", tmp_path / "a") == 0
    assert finetune(*args, "--out", tmp_path / "b", "--stop-at-step", "3") == 0
    # as the interrupted run's hint says: its resolved config (epochs turned into max_steps) and --resume
    assert finetune("--config", tmp_path / "b" / "config.yaml", "--resume") == 0
    a, b = (
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert finetune(*args, "--out", tmp_path / "a") == 2  # a run is there: --resume or --overwrite
    assert "already holds a run" in capsys.readouterr().err


def test_task_lm_continues_the_language_model_on_training_text_only(runs, tmp_path, capsys):
    out = tmp_path / "lm"
    assert (
        finetune(
            "--ckpt",
            runs["gpt2"],
            "--data",
            "sentiment-tweets",
            "--task",
            "lm",
            "--out",
            out,
            "--max-steps",
            "3",
            "--max-len",
            "32",
            "--json",
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["task"] == "lm" and r["step"] == 3 and "loss" in r["val"]
    assert (out / "finetune.yaml").is_file() and (out / "config.yaml").is_file()
    model, _ = lmlab.load(str(out))
    assert type(model).__name__ == "Decoder"
    # a labelled file: only its train split's text is prepared
    rows = [{"text": f"sentence number {i} here", "label": i % 2} for i in range(50)]
    data = tmp_path / "own.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in rows))
    out2 = tmp_path / "lm2"
    assert (
        finetune(
            "--ckpt",
            runs["lstm"],
            "--data",
            data,
            "--task",
            "lm",
            "--out",
            out2,
            "--max-steps",
            "2",
            "--max-len",
            "16",
        )
        == 0
    )
    written = (out2 / "lm-text" / "train-text.jsonl").read_text()
    corpus = get_labelled(str(data))
    assert all(t in written for t in corpus.texts("train"))
    assert not any(f'"{t}"' in written for t in corpus.texts("test") + corpus.texts("validation"))


@pytest.mark.parametrize(
    "case, message",
    [
        ("nplm", "has no task head yet; the model families with one are decoder"),
        ("one-class", "every training example has the label 'pos'"),
        ("empty-text", "own.jsonl:3: the text is empty"),
        ("lm-head", "--task lm has no task head to train alone"),
    ],
)
def test_bad_input_is_one_line(runs, tmp_path, capsys, case, message):
    data = tmp_path / "own.jsonl"
    rows = [
        {"text": f"t {i}", "label": "pos" if case == "one-class" else ["pos", "neg"][i % 2]}
        for i in range(30)
    ]
    if case == "empty-text":
        rows[2]["text"] = " "
    data.write_text("".join(json.dumps(x) + "\n" for x in rows))
    ckpt = runs["nplm"] if case == "nplm" else runs["gpt2"]
    extra = ("--task", "lm", "--method", "head") if case == "lm-head" else ()
    assert finetune("--ckpt", ckpt, "--data", data, "--out", tmp_path / "x", "--max-steps", "1", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_predict_refuses_an_unknown_label(runs, tmp_path, capsys):
    out = tmp_path / "ft"
    assert (
        finetune("--ckpt", runs["gpt2"], "--data", "sentiment-movies", "--out", out, "--max-steps", "1") == 0
    )
    capsys.readouterr()
    data = tmp_path / "p.csv"
    data.write_text("text,label\nfine film,positive\nso so,neutral\n")
    assert main(["predict", "--ckpt", str(out), "--data", str(data), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert (
        "p.csv:3: unknown label 'neutral'; the labels are negative, positive" in err and err.count("\n") == 1
    )


def test_predict_scores_the_test_split_of_labelled_data(runs, tmp_path, capsys):
    out = tmp_path / "ft"
    assert (
        finetune("--ckpt", runs["gpt2"], "--data", "sentiment-movies", "--out", out, "--max-steps", "2") == 0
    )
    capsys.readouterr()
    assert (
        main(["predict", "--ckpt", str(out), "--data", "sentiment-tweets", "--device", "cpu", "--json"]) == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == r["metrics"]["n"] == len(get_labelled("sentiment-tweets").examples("test"))
    assert main(["predict", "--ckpt", str(out), "--data", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    assert "unknown labelled data" in capsys.readouterr().err


@pytest.mark.slow
def test_full_finetuning_learns_the_sentiment_words(tmp_path, capsys, monkeypatch):
    """The fake sets put one positive or negative word in each rated sentence: a fine-tuned GPT with a
    word tokenizer must get most held-out sentences right (a wrong target, pooling or padding would
    not)."""
    monkeypatch.setenv("LMLAB_SENTIMENT_ARCHIVE", str(fake_sentiment_archive(tmp_path / "vader", n=300)))
    prepare("sentiment-movies", tmp_path / "prep", kind="word", vocab_size=400, min_frequency=1)
    vocab = json.loads((tmp_path / "prep" / "meta.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    base = tmp_path / "base"
    save_model(
        build_model(
            get_preset("gpt2-tiny", vocab_size=vocab, n_layer=1, d_model=32, n_head=2, block_size=64)
        ),
        base,
    )
    (base / "tokenizer.json").write_bytes((tmp_path / "prep" / "tokenizer.json").read_bytes())
    assert (
        finetune(
            "--ckpt",
            base,
            "--data",
            "sentiment-movies",
            "--out",
            tmp_path / "ft",
            "--epochs",
            "4",
            "--lr",
            "1e-2",
            "--batch-size",
            "16",
            "--json",
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["test"]["accuracy"] >= 0.8 and r["val"]["accuracy"] >= 0.8


def _test_file(corpus, path: Path) -> Path:
    rows = (
        json.dumps({"text": e.text, "label": corpus.label_names[e.label]}) + "\n"
        for e in corpus.examples("test")
    )
    path.write_text("".join(rows))
    return path


@pytest.mark.parametrize("method", ["lora", "houlsby", "pfeiffer", "prefix", "prompt"])
def test_tuning_methods_write_an_adapter_run_that_loads_and_predicts(runs, tmp_path, capsys, method):
    out = tmp_path / method
    assert (
        finetune(
            "--ckpt",
            runs["gpt2"],
            "--data",
            "sentiment-movies",
            "--out",
            out,
            "--method",
            method,
            "--max-steps",
            "3",
            "--lr",
            "1e-2",
            "--r",
            "4",
            "--n-prefix",
            "3",
            "--prefix-hidden",
            "8",
            "--json",
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["method"] == method and 0 < r["trainable_params"] < r["total_params"]
    for name in (
        "tuning.json",
        "tuning.safetensors",
        "base/model.safetensors",
        "train/metrics.jsonl",
        "config.yaml",
        "tokenizer.json",
        "results.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists()  # an adapter run: lmlab.load builds base + adapter
    assert r["checkpoint_bytes"] == (out / "tuning.safetensors").stat().st_size
    assert r["checkpoint_bytes"] < (out / "base" / "model.safetensors").stat().st_size / 4
    saved = load_file(str(out / "tuning.safetensors"))
    assert any(k.startswith("head.") for k in saved) and not any(
        k.startswith("backbone.tok_emb.weight") for k in saved
    )
    base, _ = lmlab.load(str(out / "base"))
    original, _ = lmlab.load(str(runs["gpt2"]))
    expected = original.state_dict()
    assert all(
        torch.equal(v, expected[k]) for k, v in base.backbone.state_dict().items()
    )  # frozen base as it was
    model, tokenizer = lmlab.load(str(out))
    assert isinstance(model, SequenceClassifier) and tokenizer is not None
    test_file = _test_file(get_labelled("sentiment-movies"), tmp_path / "test.jsonl")
    assert (
        main(
            [
                "predict",
                "--ckpt",
                str(out),
                "--data",
                str(test_file),
                "--device",
                "cpu",
                "--precision",
                "fp32",
                "--json",
            ]
        )
        == 0
    )
    p = json.loads(capsys.readouterr().out)
    assert p["metrics"]["loss"] == pytest.approx(
        r["test"]["loss"], abs=1e-5
    )  # the saved adapter is the trained one


def test_lora_run_resumes_exactly(runs, tmp_path):
    args = [
        "--ckpt",
        runs["gpt2"],
        "--data",
        "sentiment-amazon",
        "--max-steps",
        "4",
        "--method",
        "lora",
        "--dropout",
        "0.2",
        "--lr",
        "1e-2",
    ]
    assert finetune(*args, "--out", tmp_path / "a") == 0
    assert finetune(*args, "--out", tmp_path / "b", "--stop-at-step", "2") == 0
    assert finetune(*args, "--out", tmp_path / "b", "--resume") == 0
    a, b = (load_file(str(tmp_path / x / "tuning.safetensors")) for x in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_targets_matching_nothing_is_one_line(runs, tmp_path, capsys):
    assert (
        finetune(
            "--ckpt",
            runs["gpt2"],
            "--data",
            "sentiment-movies",
            "--out",
            tmp_path / "x",
            "--method",
            "lora",
            "--targets",
            "no_such_layer",
            "--max-steps",
            "1",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_such_layer" in err and err.count("\n") == 1


def test_prompt_tuning_leaves_room_for_its_virtual_tokens(runs, tmp_path, capsys):
    """Texts as long as the model's context are cut by the prompt's length (not refused as too long)."""
    data = tmp_path / "long.jsonl"
    data.write_text(
        "".join(json.dumps({"text": "the film " * 30 + str(i), "label": i % 2}) + "\n" for i in range(30))
    )
    out = tmp_path / "prompt"
    assert (
        finetune(
            "--ckpt",
            runs["gpt2"],
            "--data",
            data,
            "--out",
            out,
            "--method",
            "prompt",
            "--n-prompt",
            "5",
            "--max-len",
            "64",
            "--max-steps",
            "1",
        )
        == 0
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["max_len"] == 64 - 5
    assert (
        main(["predict", "--ckpt", str(out), "--data", str(data), "--max-len", "200", "--device", "cpu"]) == 0
    )
    assert "30 labelled" in capsys.readouterr().out


def test_task_lm_with_lora_exports_to_peft_with_the_same_logits(runs, tmp_path, capsys):
    """A LoRA on the language model itself (--task lm --method lora) is an adapter run that lmlab.load
    opens and that PEFT loads onto the Hugging Face export of its base with the same logits."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lm-lora"
    args = ["--ckpt", runs["gpt2"], "--data", "sentiment-tweets", "--task", "lm", "--method", "lora",
            "--targets", "qkv,fc", "--out", out, "--max-steps", "4", "--max-len", "32", "--lr", "5e-2"]
    assert finetune(*args, "--json") == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["task"] == "lm" and r["method"] == "lora" and 0 < r["trainable_share"] < 0.5
    assert "bpb" in r["val"] and (out / "tuning.safetensors").is_file()
    ours, _ = lmlab.load(str(out))
    base, _ = lmlab.load(str(runs["gpt2"]))
    assert main(["export", "hf", "--ckpt", str(runs["gpt2"]), "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", "peft", "--ckpt", str(out), "--out", str(tmp_path / "peft")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    ids = torch.randint(0, base.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = ours(ids), theirs(input_ids=ids).logits, base(ids)
    assert torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, c, atol=1e-3)  # trained: not the base
