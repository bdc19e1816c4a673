"""The models of the lineage, oldest first, and how each is trained under the shared budget."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One model of the lineage.

    ``family`` is the preset family (``{family}-{size}`` names the preset, e.g.
    ``lstm-small``; size ``mini`` is the small preset narrowed by :data:`MINI`); ``model_args``
    are config overrides: dropout is off for all of them, since no model sees even one epoch
    within a lineage budget.
    """

    name: str
    label: str
    family: str = ""
    lr: float = 1e-3
    model_args: tuple[str, ...] = ()

    @property
    def neural(self) -> bool:
        return bool(self.family)

    def preset(self, size: str) -> str:
        """The preset name of this entry at ``size`` (tiny, mini or small; mini starts from small)."""
        return f"{self.family}-{'small' if size == 'mini' else size}"

    def args(self, size: str) -> list[str]:
        """The config overrides of this entry at ``size``."""
        return [*self.model_args, *(MINI[self.family] if size == "mini" else ())]


_MINI_RNN = ("d_emb=128", "d_hidden=256")
# The small presets at half the width (decoders also 4 layers, not 6): 1/4 of their FLOPs (2/3 for the NPLM)
# per token, so a CPU budget of minutes buys each several hundred thousand tokens.
MINI: dict[str, tuple[str, ...]] = {
    "nplm": ("d_hidden=256",),
    "rnn": _MINI_RNN, "lstm": _MINI_RNN, "gru": _MINI_RNN,
    "gpt2": ("n_layer=4", "n_head=4", "d_model=128"),
    "llama": ("n_layer=4", "n_head=4", "n_kv_heads=2", "d_model=128"),
}
_NO_RNN_DROPOUT = ("dropout_emb=0", "dropout_in=0", "dropout_hid=0", "dropout_out=0")

ENTRIES: dict[str, Entry] = {
    "ngram": Entry("ngram", "n-gram (Chen & Goodman 1998; best order and smoothing)"),
    "nplm": Entry("nplm", "NPLM (Bengio et al. 2003)", "nplm", 2e-3, ("dropout=0",)),
    "rnn": Entry("rnn", "RNN LM (Mikolov et al. 2010)", "rnn", 2e-3, _NO_RNN_DROPOUT),
    "lstm": Entry("lstm", "LSTM LM (Zaremba et al. 2014)", "lstm", 2e-3, _NO_RNN_DROPOUT),
    "gru": Entry("gru", "GRU LM (Cho et al. 2014)", "gru", 2e-3, _NO_RNN_DROPOUT),
    "gpt2": Entry("gpt2", "GPT-2 style Transformer (Radford et al. 2019)", "gpt2", 1e-3),
    "llama": Entry("llama", "LLaMA style Transformer (Touvron et al. 2023)", "llama", 1e-3),
}
DEFAULT_MODELS = ["ngram", "nplm", "lstm", "gpt2", "llama"]
