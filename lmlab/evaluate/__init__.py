"""Evaluation: perplexity and bits per byte (``lmlab eval``), and task-specific evaluations."""

from lmlab.evaluate.perplexity import PerplexityResult, evaluate_perplexity, sum_nll

__all__ = ["PerplexityResult", "evaluate_perplexity", "sum_nll"]
