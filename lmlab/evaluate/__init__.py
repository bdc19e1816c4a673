"""Evaluation: perplexity and bits per byte (``lmlab eval``), and task-specific evaluations."""

from lmlab.evaluate.conditional import ConditionalResult, evaluate_conditional
from lmlab.evaluate.perplexity import PerplexityResult, evaluate_perplexity, sum_nll

__all__ = ["ConditionalResult", "PerplexityResult", "evaluate_conditional", "evaluate_perplexity", "sum_nll"]
