"""Pretraining as a function: ``pretrain(PretrainConfig) -> RunResult``.

Every gradient-trained LM family (decoders, NPLM, RNN/LSTM/GRU, ELMo) trains here through
the one :class:`~lmlab.train.loop.Trainer`. ``lmlab pretrain`` prints the result; the
lineage, sweeps and other packages call :func:`pretrain` and read the result, never stdout.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from lmlab.config import Precision, arg, build_config, explicit_options, load_yaml, save_config
from lmlab.errors import LmlabError
from lmlab.loader import check_same_tokenizer
from lmlab.train.options import LoopOptions, OptimOptions

# Explicit model flags of PretrainConfig -> DecoderConfig field.
MODEL_FLAGS = ("vocab_size", "n_layer", "n_head", "n_kv_heads", "d_model", "d_ff", "dropout")
# Options a resumed run takes from the command line, never from the run's saved config.yaml.
NOT_INHERITED = ("resume", "overwrite", "stop_at_step", "json", "out", "device", "progress")
# Special-token ids of a model config that a new run takes from the data's tokenizer unless given.
SPECIAL_ID_KEYS = {"pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id", "pad_id"}
ObjectiveName = Literal["auto", "causal", "mlm", "mlm+nsp", "span-corruption", "denoise", "blank-infilling"]


@dataclass
class PretrainConfig(LoopOptions):
    model: str | None = arg(
        None, "model preset, e.g. gpt2-tiny, llama-tiny, gpt2-small, llama-small (all: lmlab.models.PRESETS)"
    )
    data: Path | None = arg(None, "prepared data folder (from 'lmlab data prepare')")
    out: Path | None = arg(
        None, "run folder: config.yaml, model.safetensors, tokenizer.json, metrics.jsonl, state/"
    )
    init: Path | None = arg(
        None,
        "start from these weights (a run folder or a model.safetensors, e.g. an "
        "imported Hugging Face model) instead of a random init",
    )
    resume: bool = arg(
        False,
        "continue the run in --out from its latest checkpoint; options not given (by flag or "
        "--config) take the run's saved values",
    )
    overwrite: bool = arg(False, "start a new run in an --out that already holds one")
    # model shape (None: the preset's value)
    vocab_size: int | None = arg(None, "model vocabulary (default: the data's)")
    n_layer: int | None = arg(None, "number of blocks (default: the preset's)")
    n_head: int | None = arg(None, "attention heads (default: the preset's)")
    n_kv_heads: int | None = arg(None, "key/value heads: 1 = MQA, < n-head = GQA (default: the preset's)")
    d_model: int | None = arg(None, "model width (default: the preset's)")
    d_ff: int | None = arg(None, "MLP hidden width (default: derived from d-model)")
    dropout: float | None = arg(None, "dropout probability (default: the preset's)")
    model_args: list[str] = arg(
        [],
        "other model config fields as KEY=VALUE (JSON or YAML values), comma-separated, e.g. "
        "rope_theta=500000,tie_embeddings=false; a comma splits only before the next KEY=, so "
        "rope_scaling={\"factor\":8,\"rope_type\":\"llama3\"} is one item (the flag may also be repeated)",
        key_values=True,
    )
    objective: ObjectiveName = arg(
        "auto",
        "what the model learns to predict: causal (next token; decoders, RNNs), mlm or mlm+nsp "
        "(BERT; encoders), span-corruption (T5) or denoise (BART; encoder-decoders), blank-infilling "
        "(GLM; decoders); auto = the model family's own. All but causal need special tokens (a mask, "
        "T5 sentinels, ...): Hugging Face BERT/T5/BART tokenizers have them, 'lmlab data prepare "
        "--mask-tokens' adds them",
    )
    masking: Literal["dynamic", "static"] = arg(
        "dynamic",
        "noise of the non-causal objectives: dynamic = drawn afresh each time a window is seen "
        "(RoBERTa), static = fixed per window (BERT)",
    )
    # batches and optimisation
    block_size: int | None = arg(
        None, "tokens per training window, also the model context (default: the preset's)"
    )
    batch_size: int = arg(8, "windows per micro-batch per process")
    optim: OptimOptions = arg(OptimOptions(), "AdamW and its schedule")
    precision: Precision = arg("auto", "auto = bf16 autocast where the hardware has it, else fp32")
    seed: int = arg(1337, "seed of the init, the data order and dropout")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    # bookkeeping
    eval_iters: int = arg(20, "validation batches per evaluation (0: no validation)")
    grad_checkpointing: bool = arg(False, "recompute activations in backward (less memory, slower)")
    fsdp: bool = arg(False, "shard parameters with FSDP instead of DDP (under torchrun)")
    progress: bool = arg(True, "show a progress bar (--no-progress hides it)")
    json: bool = arg(False, "print the final figures as one JSON object")


@dataclass
class RunResult:
    """How a pretraining run ended: its last step, tokens, seconds and figures, and its folder."""

    step: int
    tokens: int
    elapsed_s: float
    loss: float | None
    val_loss: float | None
    val_bpb: float | None
    params: int
    interrupted: bool
    out: str
    is_main: bool = True  # False on the other ranks of a torchrun job

    def summary(self) -> dict[str, Any]:
        """Return the figures as a JSON-friendly dict (what ``lmlab pretrain --json`` prints)."""
        d = dataclasses.asdict(self)
        d.pop("is_main")
        return d


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """Return ``--model-args`` KEY=VALUE items as a dict (values read as JSON, else YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LmlabError(f"--model-args item {item!r} is not KEY=VALUE; write e.g. rope_theta=500000")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            # YAML for bare words (norm=rmsnorm); JSON first because YAML reads 1e-05 as a string
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def _inherit_saved(cfg: PretrainConfig) -> PretrainConfig:
    """On --resume, take the options not given (by flag or YAML) from the run's saved config.yaml.

    An option given explicitly is kept even when it equals the default (``--no-fsdp`` resumes an
    ``--fsdp`` run without FSDP). For a config made in code, whose explicit options are unknown,
    the options still at their defaults are inherited.
    """
    path = Path(cfg.out) / "config.yaml"
    if not path.is_file():
        return cfg
    saved = build_config(PretrainConfig, load_yaml(path))
    return _inherit(cfg, saved, PretrainConfig(), explicit_options(cfg))


def _inherit(cfg: Any, saved: Any, defaults: Any, explicit: frozenset[str] | None) -> Any:
    """Return ``cfg`` with each field not given explicitly replaced by the saved one (groups per field).

    ``explicit`` None: a field counts as given when it differs from its default.
    """
    changes = {}
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), getattr(defaults, f.name)
        if f.name in NOT_INHERITED:
            continue
        if dataclasses.is_dataclass(value):
            changes[f.name] = _inherit(value, getattr(saved, f.name), default, explicit)
            continue
        given = value != default if explicit is None else f.name in explicit
        if not given:
            changes[f.name] = getattr(saved, f.name)
    return dataclasses.replace(cfg, **changes)


def _model_config(cfg: PretrainConfig, data_vocab: int):
    """Return ``(DecoderConfig, init model or None)`` for the run, checking vocabulary and context."""
    from lmlab.loader import load_model_any
    from lmlab.models.io import read_arch
    from lmlab.models.registry import config_from_dict, get_preset

    overrides = parse_model_args(cfg.model_args)
    flags = {k: getattr(cfg, k) for k in MODEL_FLAGS if getattr(cfg, k) is not None}
    init_model = None
    if cfg.init is not None and not cfg.resume:
        shaping = sorted(k for k in {**overrides, **flags} if k not in ("dropout", "vocab_size"))
        if shaping:
            raise LmlabError(f"--init fixes the model shape; drop {', '.join(shaping)}")
        init_model = load_model_any(cfg.init)
        values = init_model.config.to_dict()
        if "dropout" in flags:
            values["dropout"] = flags["dropout"]
        mc = type(init_model.config).from_dict(values)
        if "vocab_size" in flags and flags["vocab_size"] != mc.vocab_size:
            raise LmlabError(
                f"--vocab-size {flags['vocab_size']} differs from the --init model's "
                f"{mc.vocab_size}; drop --vocab-size"
            )
    else:
        values = {**overrides, **flags}
        values.setdefault("vocab_size", data_vocab)
        if cfg.objective == "blank-infilling" and cfg.model is not None and _is_decoder_preset(cfg.model):
            values.setdefault("block_positions", True)  # GLM's 2-D positions
        if cfg.block_size is not None:
            values["block_size"] = cfg.block_size
        if cfg.model is not None:
            mc = get_preset(cfg.model, **values)
        elif cfg.resume:  # a run started from --init: its saved model_args hold the whole config
            arch, _ = read_arch(cfg.out)
            mc = config_from_dict(arch, values)
        else:
            raise LmlabError(
                "no model given; pass --model PRESET (e.g. gpt2-tiny, llama-tiny) or --init PATH"
            )
    if mc.vocab_size < data_vocab:
        raise LmlabError(
            f"the model's vocabulary ({mc.vocab_size}) is smaller than the data's ({data_vocab}); "
            "use data prepared with the model's tokenizer, or a larger --vocab-size"
        )
    if cfg.block_size is not None and cfg.block_size > mc.block_size:
        raise LmlabError(
            f"--block-size {cfg.block_size} exceeds the model's context of {mc.block_size}; "
            f"use --block-size {mc.block_size} or less"
        )
    return mc, init_model


def _is_decoder_preset(name: str) -> bool:
    from lmlab.models.registry import preset_family

    return preset_family(name).arch == "decoder"


def pretrain(cfg: PretrainConfig) -> RunResult:
    """Pretrain a model on prepared data; return the :class:`RunResult` (on every rank).

    Builds the model (a preset, ``--init`` weights, or the run's own on ``--resume``), runs the
    one :class:`~lmlab.train.loop.Trainer` and writes the run folder (see ``lmlab pretrain
    --help`` for its files). Under torchrun every rank calls this; only rank 0 writes.
    A failed save (disk full) raises LmlabError and keeps the last complete checkpoint; a new
    run that fails before its first checkpoint removes the run folder it created.
    """
    import torch

    from lmlab.data.prepare import load_prepared
    from lmlab.device import resolve_device, resolve_precision
    from lmlab.evaluate.perplexity import evaluate_perplexity, example_loss
    from lmlab.fileio import write_bytes
    from lmlab.models.decoder import Decoder
    from lmlab.models.io import load_state, load_weights
    from lmlab.models.registry import build_model, save_model
    from lmlab.train import checkpoint as ckpt
    from lmlab.train import distributed as D
    from lmlab.train.loop import Trainer, TrainSettings
    from lmlab.train.parts import resolve_objective, training_parts, with_tokenizer_ids
    from lmlab.train.validate import evaluate_objective

    if cfg.resume and cfg.out is not None:
        cfg = _inherit_saved(cfg)
    if cfg.data is None or cfg.out is None:
        raise LmlabError("pretrain needs --data DIR (prepared data) and --out RUN (the run folder)")
    out = Path(cfg.out)
    if cfg.resume and ckpt.latest_step(out) is None:
        raise LmlabError(f"{out} has no checkpoint to resume; drop --resume to start a new run there")
    if not cfg.resume and ckpt.latest_step(out) is not None and not cfg.overwrite:
        raise LmlabError(
            f"{out} already holds a run (checkpoint at step {ckpt.latest_step(out)}); "
            "pass --resume to continue it, --overwrite to start over, or another --out"
        )

    data = load_prepared(cfg.data)
    if data.example_len is not None and cfg.block_size is None:  # one example per window
        cfg = dataclasses.replace(cfg, block_size=data.example_len - 1)
    device = resolve_device(cfg.device)
    created = not out.exists()
    ctx = D.init_distributed(device)
    device = ctx.device
    try:
        torch.manual_seed(cfg.seed)
        mc, init_model = _model_config(cfg, data.vocab_size)
        given_ids = SPECIAL_ID_KEYS & set(parse_model_args(cfg.model_args))
        if init_model is None and not cfg.resume and not given_ids:
            mc = with_tokenizer_ids(mc, data.tokenizer())  # e.g. a T5 preset on lmlab data: its pad and eos
        if cfg.init is not None and not cfg.resume:
            check_same_tokenizer(cfg.init, Path(cfg.data))
        model = build_model(mc, data.tokenizer()) if init_model is None else init_model.train()
        del init_model
        if cfg.grad_checkpointing and not isinstance(model, Decoder):
            raise LmlabError(f"--grad-checkpointing is for Transformers; drop it for {cfg.model}")
        if cfg.grad_checkpointing:
            model.set_gradient_checkpointing(True)
        # Dropout masks differ per rank; the init above is the same on every rank.
        torch.manual_seed(cfg.seed + ctx.rank)
        block = cfg.block_size or mc.block_size
        objective_name = resolve_objective(model, cfg.objective)
        objective, batches = training_parts(
            model,
            data.train,
            block_size=block,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            device=device,
            objective=objective_name,
            tokenizer=data.tokenizer() if objective_name != "causal" else None,
            masking=cfg.masking,
            example_len=data.example_len,
            loss_mask=data.loss_mask("train"),
        )
        precision = resolve_precision(device, "fp32" if cfg.deterministic and cfg.precision == "auto"
                                      else cfg.precision)
        if cfg.deterministic and precision != "fp32" and device.type == "cpu" and ctx.is_main:
            print(f"warning: --deterministic with --precision {precision} on a CPU: bf16 autocast was seen "
                  "to vary between identical runs on Intel AMX CPUs; --precision fp32 gives bitwise results",
                  file=sys.stderr)
        bpt = data.bytes_per_token("val")

        def evaluator(m: torch.nn.Module) -> dict[str, float]:
            if objective_name != "causal":  # bits per byte is a next-token figure: own loss
                return evaluate_objective(m, objective, batches.builder, data.val, device=device,
                                          precision=precision, batch_size=cfg.batch_size,
                                          n_windows=cfg.eval_iters * cfg.batch_size * ctx.world_size,
                                          rank=ctx.rank, world_size=ctx.world_size,
                                          all_reduce=lambda t: D.all_reduce_sum(t, ctx))
            if data.example_len is not None:  # the examples' own loss (e.g. on passkey answers only)
                loss = example_loss(m, data.val, data.loss_mask("val"), data.example_len,
                                    max_examples=cfg.eval_iters * cfg.batch_size * ctx.world_size,
                                    batch_size=cfg.batch_size, device=device, precision=precision,
                                    rank=ctx.rank, world_size=ctx.world_size,
                                    all_reduce=lambda t: D.all_reduce_sum(t, ctx))
                return {"val_loss": round(loss, 6)}
            r = evaluate_perplexity(
                m,
                data.val,
                block_size=block,
                batch_size=cfg.batch_size,
                device=device,
                precision=precision,
                max_windows=cfg.eval_iters * cfg.batch_size * ctx.world_size,
                bytes_per_token=bpt,
                rank=ctx.rank,
                world_size=ctx.world_size,
                all_reduce=lambda t: D.all_reduce_sum(t, ctx),
            )
            return {"val_loss": round(r.loss, 6), "val_bpb": round(r.bits_per_byte or float("nan"), 6)}

        settings = TrainSettings(**cfg.loop_options(), optim=cfg.optim, precision=precision,
                                 show_progress=cfg.progress)
        trainer = Trainer(
            model,
            objective,
            batches,
            settings,
            out_dir=out,
            device=device,
            dist=ctx,
            evaluator=evaluator if cfg.eval_iters > 0 else None,
            write_weights=lambda m, p: save_model(m, p),
            read_weights=lambda m, p: (_read_weights(m, p, load_state) if isinstance(m, Decoder)
                                       else load_weights(m, p)),
            model_config={"preset": cfg.model, **mc.to_dict()},
            flops_per_token=model.flops_per_token(block),
            fsdp=cfg.fsdp,
        )
        if ctx.is_main:
            resolved = dataclasses.replace(  # session-only options are not part of the run's config
                cfg,
                resume=False,
                overwrite=False,
                stop_at_step=None,
                precision=precision,
                block_size=block,
                vocab_size=mc.vocab_size,
                objective=objective_name,
                model_args=[f"{k}={json.dumps(v)}" for k, v in mc.to_dict().items()],
            )
            save_config(resolved, out / "config.yaml")
            write_bytes(out / "tokenizer.json", (Path(cfg.data) / "tokenizer.json").read_bytes())
            if not cfg.resume and (out / ckpt.STATE_DIR).exists():
                shutil.rmtree(out / ckpt.STATE_DIR)
        D.barrier(ctx)
        result = trainer.fit(resume=cfg.resume)
    except Exception:
        # A new run that failed before its first checkpoint (e.g. a full disk) leaves nothing to resume:
        # remove the folder it made rather than leave a half-made run behind.
        if created and ctx.is_main and not (out / ckpt.STATE_DIR / ckpt.LATEST).exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        D.shutdown(ctx, wait_for_peers=sys.exc_info()[0] is None)
    rec = result.last_record
    return RunResult(
        step=result.step, tokens=result.tokens, elapsed_s=round(result.elapsed, 2), loss=rec.get("loss"),
        val_loss=rec.get("val_loss"), val_bpb=rec.get("val_bpb"), params=model.num_params(),
        interrupted=result.interrupted, out=str(out), is_main=ctx.is_main,
    )


def _read_weights(model, path: Path, load_state) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own types for a damaged file
        raise LmlabError(f"{path} is damaged ({e}); restore it or start over without --resume") from None
    load_state(model, state, path)
