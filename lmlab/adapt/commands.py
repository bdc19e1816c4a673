"""CLI commands ``lmlab finetune``, ``lmlab predict``, ``lmlab ulmfit`` and ``lmlab transfer baseline``:
thin faces of :mod:`lmlab.adapt`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmlab.adapt.finetune import FinetuneConfig
from lmlab.adapt.predict import PredictConfig
from lmlab.adapt.ulmfit import UlmfitConfig
from lmlab.config import arg, save_config
from lmlab.errors import LmlabError


def _figures(d: dict[str, Any], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {d[k]:.4f}" for k in keys if isinstance(d.get(k), float))


def _confusion(metrics: dict[str, Any]) -> str:
    """The confusion matrix as aligned text (rows: true label, columns: predicted)."""
    labels, m = metrics["labels"], metrics["confusion"]
    w = max(6, *(len(n) for n in labels), *(len(str(v)) for row in m for v in row)) + 2
    lines = ["  true \\ predicted " + "".join(f"{n:>{w}}" for n in labels)]
    lines += [f"  {n:<17}" + "".join(f"{v:>{w}}" for v in row) for n, row in zip(labels, m, strict=True)]
    return "\n".join(lines)


def finetune(cfg: FinetuneConfig) -> int:
    """Fine-tune a pretrained model on labelled data: a classifier (--task classify), a regressor of the
    rating (--task regress) or the language model itself on the data's training text (--task lm,
    ULMFiT's stage 2), through the one Trainer.

    --method head trains only the task head (the backbone frozen); full trains every weight; lora,
    houlsby, pfeiffer, prefix and prompt train a parameter-efficient method (lmlab.tuning; its shape:
    --r --alpha --targets --bottleneck --n-prefix --n-prompt ...) and the head. The task
    head reads the last real token's state (decoders), the pooler or [CLS] (encoders) or ULMFiT's
    concat pooling (RNN/LSTM/GRU). Validation runs on the validation split during training
    (--eval-interval) and at the end; the test split is scored once at the end: accuracy, macro-F1
    and the confusion matrix (regression: MSE, MAE, Pearson), with the trainable parameters and
    their share, training time, peak memory and checkpoint size.

    Writes OUT/config.yaml (resolved), OUT/model.safetensors (the classifier: 'lmlab predict' and
    lmlab.load read it), OUT/tokenizer.json, OUT/metrics.jsonl, OUT/results.json and OUT/state/
    (exact --resume). A tuned run (lora ... prompt) is an adapter run instead: OUT/tuning.json and
    OUT/tuning.safetensors (the method's weights and the head only) on the classifier in OUT/base,
    with the Trainer's metrics.jsonl and state/ in OUT/train; lmlab.load and lmlab predict open it as
    base + adapter. --task lm --method full writes a pretrain run (OUT/config.yaml is pretrain's, this
    command's is OUT/finetune.yaml; the prepared text is in OUT/lm-data); --task lm with a tuning
    method writes an adapter run on the language model (OUT/base), which 'lmlab export peft' turns
    into a PEFT adapter. The sentiment sets come from the
    vaderSentiment==3.3.2 sdist (downloaded once; LMLAB_VADER_SDIST names a local copy). E.g.:

      lmlab finetune --ckpt runs/gpt --data sentiment-movies --task classify --method full \\
          --out runs/gpt-movies --epochs 2
      lmlab predict --ckpt runs/gpt-movies --data reviews.jsonl --out preds.jsonl
    """
    from lmlab.adapt.finetune import finetune as run_finetune

    r = run_finetune(cfg)
    summary = r.summary()
    if cfg.json:
        print(json.dumps(summary))
    else:
        what = "interrupted at" if r.interrupted else "trained"
        print(f"{what} step {r.step} ({r.elapsed_s:.1f}s) with --method {r.method}: "
              f"{r.trainable_params:,} of {r.total_params:,} parameters trainable ({r.trainable_share:.2%})")
        keys = ("loss", "accuracy", "macro_f1", "mae", "pearson", "bpb")
        if r.val:
            print(f"validation: {_figures(r.val, keys)}")
        if r.test:
            print(f"test ({r.test['n']} examples): {_figures(r.test, keys)}")
            if "confusion" in r.test:
                print(_confusion(r.test))
        peak = "n/a" if r.peak_memory_mib is None else f"{r.peak_memory_mib:,.0f} MiB"
        print(f"peak memory {peak}, checkpoint {r.checkpoint_bytes / 2**20:,.2f} MiB; saved {r.out}")
    if r.interrupted:
        print(f"continue with: lmlab finetune --config {r.out}/config.yaml --resume")
        return 130
    return 0


def predict(cfg: PredictConfig) -> int:
    """Label the texts of a file with a fine-tuned classifier (or score them with a regressor):
    batch inference, one JSON line per text in --out (text, label and class probabilities, or
    score). When the file has labels (ratings, for a regressor) it also prints the metrics:
    accuracy, macro-F1 and the confusion matrix (MSE, MAE, Pearson). A label the classifier was
    not trained on is an error naming the line. --data may also name labelled data (a sentiment
    set, a folder of split files, hf:NAME): its --split (test by default) is labelled and scored,
    e.g. a movie-review classifier on the Amazon sentences (domain transfer). E.g.:

      lmlab predict --ckpt runs/gpt-movies --data sentences.txt --out preds.jsonl
      lmlab predict --ckpt runs/gpt-movies --data sentiment-amazon --json
    """
    from lmlab.adapt.predict import predict as run_predict

    r = run_predict(cfg)
    if cfg.json:
        print(json.dumps(r.summary()))
        return 0
    if cfg.out is None:
        for p in r.predictions:
            shown = p["label"] if "label" in p else f"{p['score']:+.3f}"
            print(f"{shown}\t{p['text']}")
    else:
        print(f"wrote {r.n} predictions to {r.out}")
    if r.metrics is not None:
        keys = ("loss", "accuracy", "macro_f1", "mae", "pearson")
        print(f"{r.metrics['n']} labelled: {_figures(r.metrics, keys)}")
        if "confusion" in r.metrics:
            print(_confusion(r.metrics))
    return 0


# ------------------------------------------------------------------ lmlab transfer baseline


@dataclass
class TransferBaselineConfig:
    method: Literal["ngram-logreg", "w2v-avg", "elmo"] = arg(
        "ngram-logreg", "ngram-logreg (bag of n-grams), w2v-avg (averaged word2vec vectors) or elmo (ELMo "
        "features), each with a logistic regression")
    data: str = arg("sentiment-movies", "labelled corpus: sentiment-movies|amazon|nyt|tweets, a .jsonl/.csv "
                                        "file (text,label) or hf:NAME")
    eval_on: list[str] = arg([], "also score on the test split of these labelled corpora, without training "
                                 "on them (domain transfer), e.g. sentiment-amazon,sentiment-nyt")
    ngram: int = arg(2, "ngram-logreg: longest n-gram (1: unigrams)")
    min_df: int = arg(2, "ngram-logreg: keep n-grams found in at least this many training texts")
    vectors: Path | None = arg(None, "w2v-avg: word vectors in word2vec text format (e.g. from 'lmlab "
                                     "word2vec train'); default: train them here on the corpus's train text")
    dim: int = arg(100, "w2v-avg: vector size when training them here")
    epochs: int = arg(5, "w2v-avg: word2vec passes when training them here")
    min_count: int = arg(2, "w2v-avg: drop words seen fewer times when training them here")
    seed: int = arg(0, "w2v-avg: seed of the word2vec training")
    ckpt: Path | None = arg(None, "elmo: an ELMo run folder ('lmlab pretrain --model elmo-...')")
    out: Path | None = arg(None, "write OUT/config.yaml and OUT/result.json here")
    json: bool = arg(False, "print the figures as one JSON object")


def transfer_baseline(cfg: TransferBaselineConfig) -> int:
    """Score a transfer-lineage baseline on a labelled corpus: a logistic regression on bag-of-n-gram,
    averaged word2vec or ELMo features, its L2 strength picked on validation; prints held-out (test)
    accuracy and macro-F1, and with --eval-on the same on other corpora (domain transfer).

      lmlab transfer baseline --method ngram-logreg --data sentiment-movies
      lmlab transfer baseline --method w2v-avg --data sentiment-movies --eval-on sentiment-amazon
      lmlab data prepare --corpus sentiment-movies --tokenizer char --out data/movies
      lmlab pretrain --model elmo-tiny --data data/movies --out runs/elmo --max-steps 500
      lmlab transfer baseline --method elmo --ckpt runs/elmo --data sentiment-movies --json
    """
    from lmlab.adapt import transfer
    from lmlab.data.labelled import get_labelled

    if cfg.method == "elmo" and cfg.ckpt is None:
        raise LmlabError("--method elmo needs --ckpt ELMO_RUN (a run of 'lmlab pretrain --model elmo-...')")
    if cfg.method != "elmo" and cfg.ckpt is not None:
        raise LmlabError(f"--ckpt is for --method elmo; {cfg.method} does not read a run, drop --ckpt")
    if cfg.method != "w2v-avg" and cfg.vectors is not None:
        raise LmlabError(f"--vectors is for --method w2v-avg; drop it for {cfg.method}")
    corpus = get_labelled(cfg.data)
    others = [get_labelled(name) for name in cfg.eval_on]
    if cfg.method == "ngram-logreg":
        result = transfer.ngram_logreg(corpus, n=cfg.ngram, min_df=cfg.min_df, eval_on=others)
    elif cfg.method == "w2v-avg":
        vectors = None
        if cfg.vectors is not None:
            from lmlab.word2vec.vectors import load_word2vec_text

            vectors = load_word2vec_text(cfg.vectors)
        result = transfer.w2v_avg(corpus, vectors, dim=cfg.dim, epochs=cfg.epochs, min_count=cfg.min_count,
                                  seed=cfg.seed, eval_on=others)
    else:
        result = transfer.elmo_logreg(corpus, cfg.ckpt, eval_on=others)
    summary = result.summary()
    if cfg.out is not None:
        from lmlab.fileio import write_text

        cfg.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, cfg.out / "config.yaml")
        write_text(cfg.out / "result.json", json.dumps(summary, indent=2) + "\n")
    if cfg.json:
        print(json.dumps(summary))
        return 0
    print(f"{result.method} on {result.data}: test accuracy {result.accuracy:.4f}, macro-F1 "
          f"{result.macro_f1:.4f} ({result.n_test} examples; validation accuracy {result.val_accuracy:.4f} "
          f"picked L2 {result.l2:g}; {result.n_features:,} features, {result.n_train} training examples, "
          f"{result.seconds:.1f}s)")
    for name, m in result.transfer.items():
        if m.get("n"):
            print(f"  transfer to {name}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} "
                  f"({m['n']} test examples)")
    return 0


# ------------------------------------------------------------------ lmlab ulmfit


def ulmfit(cfg: UlmfitConfig) -> int:
    """ULMFiT's three stages (Howard & Ruder 2018) from a general-domain language model (stage 1,
    --ckpt): stage 2 fine-tunes the LM on the target corpus's training text with discriminative
    learning rates (each layer group's rate the one above / 2.6) and slanted triangular rates
    (cut_frac 0.1, ratio 32) into OUT/stage2-lm; stage 3 trains a classifier on it with gradual
    unfreezing (one more layer group from the top each epoch) into OUT/stage3-classifier. Both are
    ordinary 'lmlab finetune' runs (config.yaml, metrics.jsonl, state/); OUT/ulmfit.json records the
    finished stages, so --resume skips them and resumes an interrupted one.

    The ablation switches turn one trick off each: --no-stage2, --no-discriminative-lr, --no-stlr
    (a constant rate), --no-gradual-unfreeze. E.g.:

      lmlab data prepare --corpus wiki-slice --tokenizer bpe --vocab-size 8000 --out data/wiki
      lmlab pretrain --model lstm-small --data data/wiki --out runs/lm --max-steps 3000
      lmlab ulmfit --ckpt runs/lm --data sentiment-movies --out runs/ulmfit
      lmlab ulmfit --ckpt runs/lm --data sentiment-movies --out runs/ulmfit-no-stlr --no-stlr
    """
    from lmlab.adapt.ulmfit import ulmfit as run_ulmfit

    result = run_ulmfit(cfg)
    summary = result.summary()
    if cfg.json:
        print(json.dumps(summary))
    else:
        off = [k for k, on in result.tricks.items() if not on]
        for name, stage in (("stage 2 (LM)", result.stage2), ("stage 3 (classifier)", result.stage3)):
            if stage:
                val = _figures(stage.get("val", {}), ("loss", "bpb", "accuracy", "macro_f1"))
                print(f"{name}: {stage['step']} steps in {stage['elapsed_s']:.1f}s; validation {val or '-'}; "
                      f"saved {stage['out']}")
        if result.accuracy is not None:
            label = "ULMFiT" + (f" without {', '.join(off)}" if off else "")
            print(f"{label}: test accuracy {result.accuracy:.4f}, macro-F1 {result.macro_f1:.4f} "
                  f"({result.layer_groups} layer groups, one more unfrozen "
                  f"every {result.unfreeze_every or '-'} steps)")
    if result.interrupted:
        print(f"continue with: lmlab ulmfit --out {result.out} --resume")
        return 130
    return 0
