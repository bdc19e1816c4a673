"""Published scaling laws and the compute-optimal allocation they imply.

Two families:

* Kaplan et al. 2020, "Scaling Laws for Neural Language Models" (arXiv 2001.08361):
  pure power laws in non-embedding parameters N, tokens D and compute, and the
  compute-efficient allocation N_opt = 1.3e9 C_min^0.73 (C_min in PF-days).
* Chinchilla (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models",
  arXiv 2203.15556): the parametric law L(N, D) = E + A/N^alpha + B/D^beta, whose
  minimum under C = 6 N D is in closed form. Three published constant sets are kept.

The losses are in nats per token on each paper's own data and tokenizer (WebText2 for
Kaplan, MassiveText for Chinchilla); they do not transfer to another corpus, but the
allocations (how to split a budget between N and D) are what the planner is for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lmlab.errors import LmlabError

PF_DAY_FLOPS = 8.64e19  # one petaflop/s-day: 1e15 FLOP/s * 86400 s (Kaplan et al. 2020, sec. 1.3)


@dataclass(frozen=True)
class Allocation:
    """A compute-optimal split of a training budget between parameters and tokens."""

    law: str
    compute: float  # training FLOPs
    n_params: float
    n_tokens: float
    loss: float  # predicted loss in nats/token on the law's own data

    @property
    def tokens_per_param(self) -> float:
        """Training tokens per parameter, D / N."""
        return self.n_tokens / self.n_params

    def as_dict(self) -> dict[str, float | str]:
        """Return the allocation as a JSON-friendly dict."""
        return {"law": self.law, "compute_flops": self.compute, "n_params": self.n_params,
                "n_tokens": self.n_tokens, "tokens_per_param": self.tokens_per_param, "loss": self.loss}


def _check_compute(compute: float) -> float:
    c = float(compute)
    if not math.isfinite(c) or c <= 0:
        raise LmlabError(f"compute must be a positive number of FLOPs, got {compute!r}; give e.g. 5.76e23")
    return c


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2), N in parameters, D in tokens."""

    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str

    def loss(self, n_params, n_tokens):
        """Predicted loss (nats/token) for N parameters trained on D tokens; works on arrays."""
        n = np.asarray(n_params, dtype=float)
        d = np.asarray(n_tokens, dtype=float)
        out = self.E + self.A / n**self.alpha + self.B / d**self.beta
        return float(out) if out.ndim == 0 else out

    @property
    def a(self) -> float:
        """Exponent of N_opt in C: N_opt is proportional to C^a with a = beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt in C: D_opt is proportional to C^b with b = alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        """G = (alpha A / (beta B))^(1 / (alpha + beta)), so N_opt = G (C/6)^a (Hoffmann et al., eq. 4)."""
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def optimal(self, compute: float, flops_per_param_token: float = 6.0) -> Allocation:
        """Minimise L(N, D) subject to C = k N D in closed form (k = ``flops_per_param_token``,
        6 by default, more when C also counts attention); return the allocation."""
        c = _check_compute(compute)
        if not flops_per_param_token > 0:
            raise LmlabError(f"FLOPs per parameter-token must be positive, got {flops_per_param_token}")
        n = self.G * (c / flops_per_param_token) ** self.a
        d = (c / flops_per_param_token) / n
        return Allocation(self.name, c, n, d, self.loss(n, d))


@dataclass(frozen=True)
class KaplanLaw:
    """The Kaplan et al. 2020 power laws (N counts non-embedding parameters).

    Constants: eqs. 1.1-1.3 / Table 5 for L(N), L(D), L(C_min); Table 2 for the joint
    fit of eq. 1.5 (which uses its own alpha_D and N_c, D_c); Table 6 for the
    compute-efficient allocation N_opt = N_e C_min^p_N, D_opt = D_e C_min^p_D.
    """

    name: str = "kaplan"
    alpha_N: float = 0.076  # eq. 1.1
    N_c: float = 8.8e13  # eq. 1.1, non-embedding parameters
    alpha_D: float = 0.095  # eq. 1.2
    D_c: float = 5.4e13  # eq. 1.2, tokens
    alpha_C: float = 0.050  # eq. 1.3, alpha_C^min
    C_c: float = 3.1e8  # eq. 1.3, C_c^min in PF-days
    nd_alpha_N: float = 0.076  # Table 2, fit of L(N, D)
    nd_alpha_D: float = 0.103  # Table 2
    nd_N_c: float = 6.4e13  # Table 2
    nd_D_c: float = 1.8e13  # Table 2
    N_e: float = 1.3e9  # Table 6 / Fig. 14: N_opt = 1.3e9 C_min^0.73
    p_N: float = 0.73
    D_e: float = 2e10  # Table 6: D_opt = 2e10 C_min^0.27 tokens
    p_D: float = 0.27

    def loss_n(self, n_params):
        """L(N) = (N_c / N)^alpha_N: loss of a model trained to convergence on ample data (eq. 1.1)."""
        return (self.N_c / np.asarray(n_params, dtype=float)) ** self.alpha_N

    def loss_d(self, n_tokens):
        """L(D) = (D_c / D)^alpha_D: loss of a large model early-stopped on D tokens (eq. 1.2)."""
        return (self.D_c / np.asarray(n_tokens, dtype=float)) ** self.alpha_D

    def loss_c(self, compute):
        """L(C_min) = (C_c / C_min)^alpha_C with C given in FLOPs (converted to PF-days; eq. 1.3)."""
        return (self.C_c / (np.asarray(compute, dtype=float) / PF_DAY_FLOPS)) ** self.alpha_C

    def loss(self, n_params, n_tokens):
        """L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D with the Table 2 constants (eq. 1.5)."""
        n = np.asarray(n_params, dtype=float)
        d = np.asarray(n_tokens, dtype=float)
        inner = (self.nd_N_c / n) ** (self.nd_alpha_N / self.nd_alpha_D) + self.nd_D_c / d
        return inner**self.nd_alpha_D

    def optimal(self, compute: float) -> Allocation:
        """Kaplan's compute-efficient allocation for C FLOPs (Table 6) with loss L(C_min).

        Kaplan's fit is stated for C_min, the compute at a batch size well below the
        critical one, so 6 N_opt D_opt need not equal C exactly.
        """
        c = _check_compute(compute)
        c_pf = c / PF_DAY_FLOPS
        n = self.N_e * c_pf**self.p_N
        d = self.D_e * c_pf**self.p_D
        return Allocation(self.name, c, n, d, float(self.loss_c(c)))


# Hoffmann et al. 2022, Appendix D.2, eq. 10 as printed in the paper body (rounded).
HOFFMANN = ChinchillaLaw("hoffmann", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
                         source="Hoffmann et al. 2022 (arXiv 2203.15556), App. D.2 eq. 10, as printed")

# The unrounded Approach-3 estimates from the paper's TeX source, which Besiroglu et al. 2024
# ("Chinchilla Scaling: A replication attempt", arXiv 2404.10102) point out. Their code
# (Epoch AI's analyzing-chinchilla repository, data_analysis notebook, `true_params`)
# stores them in the fit's log space: a = log A = 6.0073404, b = log B = 6.0179186,
# e = log E = 0.5267228, alpha = 0.33917084, beta = 0.2849083 (A = 406.40, B = 410.72,
# E = 1.6934); Pearce & Song 2024 ("Reconciling Kaplan and Chinchilla Scaling Laws", code
# script_analysis_kaplan_chinchilla.py) use the same values to 4 digits. With them the
# Gopher budget (5.76e23 FLOPs) gives N_opt = 40.4B, the 40B Hoffmann et al. report for
# Approach 3, and a = 0.4565 (their Table 2: 0.46); the rounded set gives 32.2B and 0.452.
HOFFMANN_EXACT = ChinchillaLaw("hoffmann-exact", E=math.exp(0.5267228), A=math.exp(6.0073404),
                               B=math.exp(6.0179186), alpha=0.33917084, beta=0.2849083,
                               source="Hoffmann et al. 2022 TeX source, via Besiroglu et al. 2024")

# Besiroglu et al. 2024 (arXiv 2404.10102), eq. 3: refit of Approach 3 on data extracted
# from Hoffmann et al.'s Figure 4 (their code's fitted log-space values are a = 6.17795598,
# b = 7.64273236, e = 0.59711196, alpha = 0.34781303, beta = 0.36585412).
EPOCH = ChinchillaLaw("epoch", E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658,
                      source="Besiroglu et al. 2024 (arXiv 2404.10102), eq. 3")

KAPLAN = KaplanLaw()

LAWS: dict[str, ChinchillaLaw | KaplanLaw] = {
    law.name: law for law in (HOFFMANN, HOFFMANN_EXACT, EPOCH, KAPLAN)
}


def get_law(name: str) -> ChinchillaLaw | KaplanLaw:
    """Return the published law called ``name``; raise LmlabError listing the names otherwise."""
    try:
        return LAWS[name]
    except KeyError:
        raise LmlabError(f"unknown scaling law {name!r}; choose one of {', '.join(LAWS)}") from None


def compute_from_gpu_hours(gpu_hours: float, flops_per_s: float, mfu: float) -> float:
    """Training FLOPs delivered by ``gpu_hours`` of accelerators with peak ``flops_per_s`` each at
    model-FLOPs utilisation ``mfu``: C = hours * 3600 * peak * mfu. Returns FLOPs."""
    for name, value in (("gpu-hours", gpu_hours), ("flops-per-s", flops_per_s)):
        if not math.isfinite(value) or value <= 0:
            raise LmlabError(f"--{name} must be positive, got {value!r}")
    if not (0 < mfu <= 1):
        raise LmlabError(f"--mfu is a fraction of peak in (0, 1], got {mfu!r}; typical values are 0.3-0.5")
    return gpu_hours * 3600.0 * flops_per_s * mfu


def plan(compute: float, law: str) -> Allocation:
    """Return the compute-optimal allocation of ``compute`` training FLOPs under the named law."""
    return get_law(law).optimal(compute)
