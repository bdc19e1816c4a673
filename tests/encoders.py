"""Tiny Hugging Face encoders and their tokenizers, built locally (never downloaded), for the encoder
tests (interop parity, fill-mask, eval, embed)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.parity import randomize

WORDS = ("the king of denmark is dead and the queen of england is alive the prince of wales "
         "loves the daughter of the lord chamberlain who is a fool and a wise man").split()
TEXT = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
CFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
           max_position_embeddings=40)


def bert_tokenizer(folder: Path):
    """Train a small uncased WordPiece tokenizer ([CLS] ... [SEP] template) and save it, HF style."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(TEXT, vocab_size=120, min_frequency=1, show_progress=False)
    tok = BertTokenizerFast(tokenizer_object=wp._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                            pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    tok.save_pretrained(folder)
    return tok


def roberta_tokenizer(folder: Path):
    """Train a small byte-level BPE with RoBERTa's specials and template (<s> ... </s>) and save it."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                               sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                               mask_token="<mask>")
    tok.save_pretrained(folder)
    return tok


def hf_encoder(folder: Path, arch: str = "BertForMaskedLM", with_tokenizer: bool = True, **kw):
    """Save a tiny random HF encoder of class ``arch`` (and a matching tokenizer) in ``folder``; return
    ``(model, tokenizer or None)``."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    roberta = arch.startswith("Roberta")
    tok = None
    if with_tokenizer:
        tok = (roberta_tokenizer if roberta else bert_tokenizer)(folder)
    vocab = len(tok) if tok is not None else 97
    extra = dict(type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2) if roberta else {}
    config = getattr(transformers, "RobertaConfig" if roberta else "BertConfig")(
        vocab_size=vocab, **{**CFG, **extra, **kw})
    torch.manual_seed(0)
    model = randomize(getattr(transformers, arch)(config))
    model.save_pretrained(folder)
    return model, tok


def padded_batch(vocab: int, pad: int, T: int = 20, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of random ids, the last two right-padded with ``pad``; return ``(ids, attention_mask)``."""
    x = torch.randint(5, vocab, (3, T), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(x)
    mask[1, T - 6:] = 0
    mask[2, 5:] = 0
    return x.masked_fill(mask == 0, pad), mask


def lmlab_tokenizer(kind: str = "word"):
    """An lmlab tokenizer trained on ``TEXT`` with ``<|mask|>``, ``<|cls|>`` and ``<|sep|>`` appended (as
    the objectives' ``lmlab data prepare --mask-tokens`` does)."""
    from lmlab.data.tokenizers import train_tokenizer

    tok = train_tokenizer(kind, TEXT * 3, vocab_size=200, min_frequency=1)
    tok.hf.add_special_tokens(["<|mask|>", "<|cls|>", "<|sep|>"])
    return tok


def lmlab_run(folder: Path, preset: str = "bert-micro", tokenizer=None, **kw) -> Path:
    """Save a randomly initialised encoder preset and its tokenizer as a run folder; return it."""
    from lmlab.models import build_model, get_preset, save_model

    tok = tokenizer or lmlab_tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(folder / "tokenizer.json")
    torch.manual_seed(0)
    config = get_preset(preset, **{"vocab_size": tok.vocab_size, "block_size": 32, **kw})
    model = randomize(build_model(config))
    save_model(model, folder)
    return folder
