"""Scaling laws: published laws and the compute-optimal planner (``laws``), fitting laws to a table of
runs (``fit``: Chinchilla approaches 1-3 and Kaplan's power laws), and their plots (``plots``)."""

from lmlab.scaling.fit import FitResult, RunTable, read_runs, run_fit
from lmlab.scaling.laws import LAWS, Allocation, ChinchillaLaw, KaplanLaw, get_law, plan

__all__ = ["LAWS", "Allocation", "ChinchillaLaw", "FitResult", "KaplanLaw", "RunTable", "get_law", "plan",
           "read_runs", "run_fit"]
