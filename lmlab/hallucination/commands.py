"""CLI commands: ``lmlab hallucination world``, ``eval`` and ``run``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError
from lmlab.hallucination.experiment import ModelSpec
from lmlab.hallucination.world import WorldSpec


@dataclass
class WorldConfig:
    out: Path | None = arg(None, "folder for world.json, corpus/, corpus-unknown/, data/ and data-unknown/")
    world: WorldSpec = arg(WorldSpec(), "the people and how often the text mentions them")
    k: int = arg(3, "source sentences retrieved for the open-book training lines")
    vocab_size: int = arg(1024, "BPE vocabulary of the world's tokenizer")
    overwrite: bool = arg(False, "replace a world already in --out")
    json: bool = arg(False, "print the summary as one JSON object")


def world(cfg: WorldConfig) -> int:
    """Write a generated world of facts: fictional people (birth year, birth city, profession,
    employer) in three frequency buckets (often: many biographies; rarely: one or two; never: held
    out), their training text (biographies, and question-answer lines for a share of the seen
    people, closed-book and open-book with BM25-retrieved sentences) with and without lines that
    answer "unknown" about never-mentioned names, and both as prepared data for 'lmlab pretrain'.

    Writes OUT/world.json, OUT/corpus/ and OUT/corpus-unknown/ (train.txt, val.txt), OUT/data/ and
    OUT/data-unknown/ (one tokenizer) and OUT/config.yaml. Returns 0.

    example: lmlab hallucination world --out runs/world
    example: lmlab pretrain --model llama-tiny --data runs/world/data --out runs/hbase --d-model 128
    """
    from lmlab.hallucination.experiment import write_world

    out = _need(cfg.out, "--out DIR (the world's folder)")
    summary = write_world(cfg.world, out, cfg.k, cfg.vocab_size, cfg.overwrite)
    save_config(cfg, out / "config.yaml")
    if cfg.json:
        print(json.dumps(summary))
        return 0
    people = ", ".join(f"{n} {b}" for b, n in summary["people"].items())
    print(f"wrote a world of {people} people ({summary['asked']} asked about) to {out}: "
          f"{summary['source_sentences']:,} source sentences, {summary['data']['train_tokens']:,} training "
          f"tokens ({summary['data-unknown']['train_tokens']:,} with the 'unknown' lines)")
    return 0


@dataclass
class EvalConfig:
    ckpt: Path | None = arg(None, "run folder of a model pretrained on the world's text")
    world: Path | None = arg(None, "the world's folder (from 'lmlab hallucination world')")
    out: Path | None = arg(None, "also write results.json and config.yaml into this folder")
    questions: int = arg(200, "questions per entity-frequency bucket")
    k: int = arg(3, "source sentences retrieved for open-book prompts and for retrieval grounding")
    samples: int = arg(8, "sampled answers per question for the SelfCheck detectors")
    question_seed: int = arg(0, "seed of the questions asked and of the sampling")
    detectors: bool = arg(True, "score the detectors (--no-detectors: only the hallucination rates)")
    json: bool = arg(False, "print the results as one JSON object")


def evaluate(cfg: EvalConfig) -> int:
    """Ask a model questions about the world's people seen often, rarely and never, closed-book and
    open-book (the BM25-retrieved source sentences first); report the hallucination rate and the
    accuracy by entity frequency (for a never-seen person only "unknown" is right: any other answer
    is a hallucination), and each detector's AUROC for telling hallucinated from correct answers:
    sequence log-probability, mean entropy, SelfCheckGPT's unigram score and token agreement over
    sampled answers, and retrieval grounding.

    Prints a table (--json: one JSON object). Returns 0.

    example: lmlab hallucination eval --ckpt runs/hbase --world runs/world
    example: lmlab hallucination eval --ckpt runs/hbase --world runs/world --questions 50 --json
    """
    from lmlab.hallucination.experiment import evaluate_run, format_table

    ckpt = _need(cfg.ckpt, "--ckpt RUN (a model pretrained on the world's text)")
    world_dir = _need(cfg.world, "--world DIR (from 'lmlab hallucination world')")
    result = evaluate_run(ckpt, world_dir, cfg.questions, cfg.k, cfg.samples, cfg.question_seed,
                          cfg.detectors)
    if cfg.out is not None:
        from lmlab.fileio import write_json

        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(cfg.out) / "results.json", result)
        save_config(cfg, Path(cfg.out) / "config.yaml")
    if cfg.json:
        print(json.dumps(result))
        return 0
    print(format_table({ckpt.name: result}))
    return 0


@dataclass
class RunConfig:
    out: Path | None = arg(None, "folder for world/, base/, unknown/, results.json and config.yaml")
    world: WorldSpec = arg(WorldSpec(), "the people and how often the text mentions them")
    model: ModelSpec = arg(ModelSpec(), "the decoder trained on the world")
    questions: int = arg(200, "questions per entity-frequency bucket")
    k: int = arg(3, "source sentences retrieved (open-book training lines and prompts, grounding)")
    samples: int = arg(8, "sampled answers per question for the SelfCheck detectors")
    question_seed: int = arg(0, "seed of the questions asked and of the sampling")
    vocab_size: int = arg(1024, "BPE vocabulary of the world's tokenizer")
    overwrite: bool = arg(False, "replace results already in --out")
    progress: bool = arg(True, "show progress bars (--no-progress hides them)")
    json: bool = arg(False, "print the results as one JSON object")


def run(cfg: RunConfig) -> int:
    """The whole hallucination experiment: write a world, pretrain a base model on its text and an
    "unknown"-trained model on the text with lines that answer "unknown" about never-mentioned names
    (same steps and seed), then ask both closed-book and open-book (retrieval-augmented) questions
    about people seen often, rarely and never. Reports the hallucination rate and accuracy by entity
    frequency before and after each mitigation, and the detectors' AUROC on each model.

    Writes OUT/world/, OUT/base/, OUT/unknown/ (runs), OUT/results.json and OUT/config.yaml; prints
    the table (--json: one JSON object). Returns 0.

    example: lmlab hallucination run --out runs/halluc
    example: lmlab hallucination run --out runs/h-small --often 40 --rarely 40 --never 20 --steps 200
    """
    from lmlab.hallucination.experiment import format_table, run_experiment

    out = _need(cfg.out, "--out DIR")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    result = run_experiment(out, cfg.world, cfg.model, cfg.questions, cfg.k, cfg.samples, cfg.question_seed,
                            cfg.vocab_size, cfg.overwrite, cfg.progress)
    if cfg.json:
        print(json.dumps(result))
        return 0
    print(format_table({"base": result["base"], "unknown": result["unknown"]}))
    print(f"wrote {out / 'results.json'} in {result['wall_s']:.0f}s")
    return 0


def _need(path: Path | None, what: str) -> Path:
    if path is None:
        raise LmlabError(f"missing {what}")
    return Path(path)
