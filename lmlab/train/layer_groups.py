"""Layer groups: a model's parameters cut into depth-ordered groups, bottom to top.

ULMFiT's discriminative learning rates and gradual unfreezing (Howard & Ruder 2018) act on
"layer groups": the embeddings, each block or recurrent layer, and the final norm with the
output head. :func:`layer_groups` gives them for every lmlab family, and for a task model
that wraps one (an object with ``.backbone``, e.g. a sequence classifier: its other
parameters, the task head, are the top group). A task head does not use the backbone's
language-model output layers (the softmax, BERT's MLM and NSP heads), so in a task model they
join the task head's group, as ULMFiT's classifier leaves out the LM decoder; the lowest
group that trains then is a real layer of the network.

Groups are found by module-name prefixes, so modules wrapped by LoRA, adapters or prefix
tuning (``blocks.0.attn.qkv.lora_A``) stay in their block's group. A parameter that no prefix
claims joins the top group. A weight tied across groups (an embedding that is also the
softmax) is listed once, under its first name: in a language model it sits in the top group,
with the output layer it also is (as in fastai's ULMFiT language-model split, where the tied
encoder goes with the decoder), and in a task model, which has no use for the softmax, in the
embedding group.
"""

from __future__ import annotations

from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.decoder import Decoder
from lmlab.models.elmo import ELMo
from lmlab.models.encdec import EncoderDecoder
from lmlab.models.encoder import Encoder
from lmlab.models.nplm import NPLM
from lmlab.models.rnn import RNNLM
from lmlab.models.seq2seq import Seq2Seq

Group = list[tuple[str, nn.Parameter]]


def _stack(prefix: str, n: int) -> list[list[str]]:
    """One group per element of the ModuleList at ``prefix``."""
    return [[f"{prefix}.{i}"] for i in range(n)]


def _prefixes(model: nn.Module) -> list[list[str]]:
    """The module-name prefixes of each group of ``model``, bottom to top."""
    if isinstance(model, Decoder):
        return [["tok_emb", "pos_emb", "block_pos_emb"], *_stack("blocks", len(model.blocks)),
                ["norm_f", "lm_head"]]
    if isinstance(model, Encoder):
        return [["tok_emb", "pos_emb", "type_emb", "norm_emb"], *_stack("blocks", len(model.blocks)),
                ["mlm", "pooler", "nsp_head"]]
    if isinstance(model, EncoderDecoder):
        enc = _stack("encoder.blocks", len(model.encoder.blocks))
        dec = _stack("decoder.blocks", len(model.decoder.blocks))
        enc[-1].append("encoder.norm")  # the encoder's output goes with its last block
        dec[0][:0] = ["decoder.pos", "decoder.rel", "decoder.emb_norm"]  # the decoder's input with its first
        return [["tok_emb", "encoder.pos", "encoder.rel", "encoder.emb_norm"], *enc, *dec,
                ["decoder.norm", "lm_head", "final_logits_bias"]]
    if isinstance(model, RNNLM):
        return [["emb"], *_stack("layers", len(model.layers)), ["proj", "head"]]
    if isinstance(model, ELMo):
        layers = [[f"fwd.{i}", f"bwd.{i}"] for i in range(len(model.fwd))]
        return [["tok_emb", "char_cnn"], *layers, ["head"]]
    if isinstance(model, NPLM):
        return [["emb"], ["hidden"], ["out", "direct"]]
    if isinstance(model, Seq2Seq):
        return [["src_emb", "tgt_emb"], ["encoder"], ["init_state", "attention", "decoder"],
                ["pre_output", "output"]]
    raise LmlabError(
        f"{type(model).__name__} has no layer groups (discriminative learning rates and gradual "
        "unfreezing need them); they exist for decoders, encoders, encoder-decoders, RNN/LSTM/GRU LMs, "
        "ELMo, NPLM, Bahdanau seq2seq and task models with a .backbone of one of these"
    )


def _lm_outputs(model: nn.Module) -> tuple[str, ...]:
    """The module-name prefixes of ``model``'s language-model output layers (unused under a task head)."""
    if isinstance(model, (Decoder, EncoderDecoder)):
        return ("lm_head", "final_logits_bias")
    if isinstance(model, Encoder):
        return ("mlm", "nsp_head")
    if isinstance(model, RNNLM):
        return ("proj", "head")
    if isinstance(model, ELMo):
        return ("head",)
    if isinstance(model, NPLM):
        return ("out", "direct")
    return ()


def _claims(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_groups(model: nn.Module) -> list[Group]:
    """Return ``model``'s parameters as layer groups, bottom (embeddings) to top (head).

    Each group is a list of ``(name, parameter)`` with the names of ``model.named_parameters()``
    (frozen parameters included); empty groups are left out. A model with a ``.backbone``
    (a task model) gets its backbone's groups, then one group of its own other parameters
    (the task head) and the backbone's language-model output layers. Raises LmlabError for a
    model of no known family.
    """
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        outputs = _lm_outputs(backbone)
        inner = [[(n, p) for n, p in group if not any(_claims(x, n) for x in outputs)]
                 for group in _family_groups(backbone, tied_up=False)]
        ids = {id(p) for group in inner for _, p in group}
        groups = [[(f"backbone.{n}", p) for n, p in group] for group in inner]
        head = [(n, p) for n, p in model.named_parameters() if id(p) not in ids]
        return [g for g in [*groups, head] if g]
    return _family_groups(model, tied_up=True)


def _family_groups(model: nn.Module, tied_up: bool) -> list[Group]:
    """The groups of a model of an lmlab family; a tied weight goes to the highest group of its names
    when ``tied_up``, else to the lowest."""
    prefixes = _prefixes(model)

    def index(name: str) -> int:
        claimed = (i for i, ps in enumerate(prefixes) if any(_claims(x, name) for x in ps))
        return next(claimed, len(prefixes) - 1)

    first: dict[int, tuple[str, nn.Parameter, int]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        i = index(name)
        if id(p) not in first:
            first[id(p)] = (name, p, i)
        elif tied_up and i > first[id(p)][2]:
            first[id(p)] = (first[id(p)][0], p, i)
    groups: list[Group] = [[] for _ in prefixes]
    for name, p, i in first.values():
        groups[i].append((name, p))
    return [g for g in groups if g]


def unfrozen_count(step: int, every: int, n_groups: int) -> int:
    """Return how many layer groups, counted from the top, train at optimiser step ``step`` (0-based)
    under gradual unfreezing that unfreezes one more group every ``every`` steps (0: all of them)."""
    if every <= 0:
        return n_groups
    return min(n_groups, 1 + step // every)


class GradualUnfreezing:
    """ULMFiT's gradual unfreezing over ``groups``: the trainable parameters of each layer group,
    bottom to top, groups without any left out (see :func:`trainable_groups`).

    A parameter frozen by its owner (e.g. a backbone frozen under LoRA) is in no group, so it
    stays frozen. :meth:`apply` sets ``requires_grad`` for a step, so a frozen group gets no
    gradient, hence no update and no weight decay; :meth:`restore` makes every parameter of the
    groups trainable again.
    """

    def __init__(self, groups: list[list[nn.Parameter]], every: int):
        self.every = every
        self.groups = groups

    def apply(self, step: int) -> int:
        """Freeze all but the top groups due at ``step``; return how many groups train."""
        n = unfrozen_count(step, self.every, len(self.groups))
        for i, group in enumerate(self.groups):
            for p in group:
                p.requires_grad_(i >= len(self.groups) - n)
        return n

    def restore(self) -> None:
        """Make every parameter of the groups trainable again."""
        for group in self.groups:
            for p in group:
                p.requires_grad_(True)


def trainable_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Return the trainable parameters of each of ``model``'s layer groups, bottom to top, leaving
    out groups with none: the groups discriminative rates and gradual unfreezing count (under LoRA,
    the blocks that hold adapters; the top one trains at the peak rate and unfreezes first)."""
    groups = ([p for _, p in group if p.requires_grad] for group in layer_groups(model))
    return [g for g in groups if g]
