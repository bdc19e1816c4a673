"""lmlab: a language-model lab on PyTorch.

``lmlab.load(path)`` returns ``(model, tokenizer)`` for a run directory or a Hugging Face
model folder. Submodules are imported lazily so ``import lmlab`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a run directory or a Hugging Face model folder."""
    from lmlab.loader import load as _load

    return _load(path, *args, **kwargs)
