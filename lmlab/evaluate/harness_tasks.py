"""lm-evaluation-harness tasks built from lmlab's own corpora, so ``lmlab eval --harness`` needs no hub.

Each task is an lm-eval task config (what its YAML holds) over documents written at run time from a
corpus: :func:`write_tasks` writes ``NAME.yaml`` with ``dataset_path: json`` and ``data_files``
pointing at ``NAME-<content hash>.jsonl`` beside it, so ``lm_eval --include_path FOLDER --tasks
NAME`` runs them too. The hash in the file name keeps the datasets cache from serving stale rows.

- ``lmlab_sentiment``: the held-out (test split) movie-review snippets people rated for sentiment in
  the VADER study (``sentiment-movies``; neutral ones left out), as SST-2's two-way multiple choice
  (" negative" / " positive" after "Question: Is this sentence positive or negative?\\nAnswer:");
  accuracy and Matthews' correlation.
- ``lmlab_shakespeare_cloze``: the last word of a line of held-out Shakespeare (the validation works
  of ``lmlab data prepare --corpus shakespeare``) given the speaker and up to three lines before it,
  multiple choice against three last words of other held-out lines (seeded, fixed).
- ``lmlab_shakespeare_lastword``: the same lines LAMBADA-style: log-likelihood of the true last word
  (perplexity) and whether every one of its tokens is the model's greedy choice (acc).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

CLOZE_DOCS = 1000  # held-out lines in the Shakespeare tasks (evenly spaced over the validation works)
CLOZE_CHOICES = 4
CLOZE_CONTEXT_LINES = 3
CLOZE_SEED = 0  # changing it changes the task: never do
_SPEAKER = re.compile(r"^[A-Z][A-Z .,'&-]*\.$")  # "KING HENRY." opens a speech
_LAST_WORD = re.compile(r"\s([a-z][a-z']*[a-z])[^A-Za-z]*$")  # a whole lowercase word ending the line


@dataclass(frozen=True)
class HarnessTask:
    """A task: its name, a one-line description, the function returning its documents (JSON
    objects), and its lm-eval config without the data files."""

    name: str
    description: str
    docs: Callable[[], list[dict[str, Any]]]
    config: dict[str, Any]


def sentiment_docs(examples: Iterable[Any]) -> list[dict[str, Any]]:
    """Return ``{"text", "label"}`` documents (label 0 negative, 1 positive) of labelled examples
    (:class:`lmlab.data.labelled.Example`); neutral ones (no label) are left out."""
    return [{"text": e.text, "label": int(e.label)} for e in examples if e.label is not None]


def cloze_docs(documents: Iterable[str], n_docs: int = CLOZE_DOCS, n_choices: int = CLOZE_CHOICES,
               context_lines: int = CLOZE_CONTEXT_LINES, seed: int = CLOZE_SEED) -> list[dict[str, Any]]:
    """Return cloze documents from play text: ``{"context", "answer", "choices", "label"}``.

    A candidate is a line of a speech (a blank-line-separated block opened by its speaker's name in
    capitals) with at least four words that ends in a lowercase word of three letters or more. The
    context is the speaker line, up to ``context_lines`` lines before it in the speech, and the line
    without its last word; the answer is that word (its trailing punctuation dropped). At most
    ``n_docs`` candidates, evenly spaced, are kept; each gets ``n_choices - 1`` distractors drawn
    (seeded per document) from the other kept answers, placed with the answer in a seeded order.
    """
    found: list[tuple[str, str]] = []
    for doc in documents:
        for block in re.split(r"\n\s*\n", doc):
            lines = [ln.strip() for ln in block.strip().split("\n") if ln.strip()]
            if len(lines) < 2 or not _SPEAKER.match(lines[0]):
                continue
            for j in range(1, len(lines)):
                line = lines[j]
                m = _LAST_WORD.search(line)
                if m is None or len(m.group(1)) < 3 or len(line.split()) < 4 or line.startswith("["):
                    continue
                before = lines[max(1, j - context_lines):j]
                context = "\n".join([lines[0], *before, line[:m.start(1)].rstrip()])
                found.append((context, m.group(1)))
    if not found:
        raise LmlabError("no cloze lines found: the text has no speeches (a speaker line in capitals "
                         "ending in '.', then lines of four words or more)")
    step = max(1, len(found) // n_docs)
    kept = found[::step][:n_docs]
    pool = sorted({answer.lower() for _, answer in kept})
    if len(pool) < n_choices:
        raise LmlabError(f"only {len(pool)} distinct last words; a cloze of {n_choices} choices needs "
                         f"at least {n_choices}")
    out = []
    for i, (context, answer) in enumerate(kept):
        rng = random.Random(f"{seed}:{i}")
        others = rng.sample([w for w in pool if w != answer.lower()], n_choices - 1)
        choices = [answer, *others]
        rng.shuffle(choices)
        out.append({"context": context, "answer": answer, "choices": choices,
                    "label": choices.index(answer)})
    return out


def _sentiment() -> list[dict[str, Any]]:
    from lmlab.data.labelled import sentiment

    return sentiment_docs(sentiment("sentiment-movies").examples("test"))


def _shakespeare_lines() -> list[dict[str, Any]]:
    from lmlab.data.corpora import get_corpus

    return cloze_docs(get_corpus("shakespeare").documents("val"))


def _metric(name: str, aggregation: str = "mean", higher: bool = True) -> dict[str, Any]:
    return {"metric": name, "aggregation": aggregation, "higher_is_better": higher}


TASKS: dict[str, HarnessTask] = {t.name: t for t in [
    HarnessTask(
        "lmlab_sentiment",
        "held-out VADER movie-review snippets, positive or negative (SST-2's prompt, 2-way choice)",
        _sentiment,
        {"output_type": "multiple_choice",
         "doc_to_text": "{{text}}\nQuestion: Is this sentence positive or negative?\nAnswer:",
         "doc_to_choice": ["negative", "positive"], "doc_to_target": "label",
         # Matthews' correlation: 0 for a model that answers one label whatever the text, where
         # acc would read as the share of that label
         "metric_list": [_metric("acc"), _metric("mcc", "matthews_corrcoef")]}),
    HarnessTask(
        "lmlab_shakespeare_cloze",
        f"the last word of a held-out Shakespeare line given the lines before it "
        f"({CLOZE_CHOICES}-way choice)",
        _shakespeare_lines,
        {"output_type": "multiple_choice", "doc_to_text": "context", "doc_to_choice": "choices",
         "doc_to_target": "label", "metric_list": [_metric("acc"), _metric("acc_norm")]}),
    HarnessTask(
        "lmlab_shakespeare_lastword",
        "the same lines LAMBADA-style: perplexity of the true last word, acc = all its tokens greedy",
        _shakespeare_lines,
        {"output_type": "loglikelihood", "doc_to_text": "context", "doc_to_target": "{{' ' + answer}}",
         "target_delimiter": "",
         "metric_list": [_metric("perplexity", "perplexity", False), _metric("acc")]}),
]}


def resolve_tasks(names: Sequence[str]) -> list[HarnessTask]:
    """Return the tasks named (in order, each once); LmlabError naming the known ones for another name."""
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        what = f"unknown harness task {unknown[0]!r}" if unknown else "no harness task given"
        raise LmlabError(f"{what}; the tasks are: {', '.join(TASKS)}")
    return [TASKS[n] for n in dict.fromkeys(names)]


def write_tasks(tasks: Sequence[HarnessTask], folder: Path) -> Path:
    """Write each task's documents (JSONL) and lm-eval YAML into ``folder``; return ``folder``."""
    import yaml

    from lmlab.fileio import write_text

    folder.mkdir(parents=True, exist_ok=True)
    built: dict[Callable, str] = {}  # tasks over the same documents share one file
    for task in tasks:
        if task.docs not in built:
            docs = task.docs()
            if not docs:
                raise LmlabError(f"{task.name} has no documents: its corpus gave none")
            text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
            digest = hashlib.sha256(text.encode()).hexdigest()[:12]
            path = folder / f"{task.name}-{digest}.jsonl"
            write_text(path, text)
            built[task.docs] = str(path.resolve())
        config = {"task": task.name, "dataset_path": "json",
                  "dataset_kwargs": {"data_files": {"test": built[task.docs]}}, "test_split": "test",
                  **task.config, "metadata": {"version": 1.0, "description": task.description}}
        write_text(folder / f"{task.name}.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return folder
