"""lmlab: a language-model lab on PyTorch."""

__version__ = "0.1.0"
