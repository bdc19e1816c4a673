"""Smoothing for n-gram models: discounts and the probabilities/backoff weights they imply.

Two families, both stored as an ARPA backoff model (p for every seen n-gram, a backoff
weight for every context):

- backoff (Katz 1987 style): seen n-grams get a discounted probability p*(w|h); the mass
  left over is spread over the unseen words in proportion to the lower order,
  alpha(h) = (1 - sum_seen p*(w|h)) / (1 - sum_seen p(w|h')).
  ``mle`` (no discount: unseen words after a seen context get probability 0),
  ``add-k`` (p* = (c + k) / (c(h) + k|V|); the mass add-k reserves for unseen words
  reaches them through the lower order instead of uniformly, which ARPA cannot store;
  at the unigram level this is exactly add-k), ``good-turing`` (Simple Good-Turing,
  Gale & Sampson 1995, on every count) and ``katz`` (Good-Turing r* = (r+1) n_{r+1} / n_r
  for counts r <= k with Katz's renormalisation, larger counts kept). A context whose
  counts are all kept has no mass for unseen words; as SRILM does, its denominator is
  raised until it has.
- interpolated: p(w|h) = p*(w|h) + gamma(h) p(w|h'), stored with backoff gamma(h).
  ``witten-bell``, ``kn`` (one discount per order) and ``mkn`` (Chen & Goodman's D1, D2,
  D3+ per order), both on KenLM lmplz's adjusted counts: the top order and n-grams that
  start with <s> keep their counts, other lower-order n-grams get continuation counts
  N1+(. w); unigrams interpolate with the uniform distribution.

The vocabulary V that probabilities sum to 1 over is every word but <s>, with </s> and
<unk>. Unseen unigrams (<unk>) get the unigram level's left-over mass.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.ngram.counts import NgramCounts

BOS_ID = 1
INTERPOLATED = ("witten-bell", "kn", "mkn")
LMPLZ_FALLBACK = (0.5, 1.0, 1.5)  # lmplz --discount_fallback default
PROB_EPSILON = 3e-6  # SRILM's Prob_Epsilon: less backoff mass than this counts as none


def count_of_counts(counts: np.ndarray, max_r: int | None = None) -> dict[int, int]:
    """n_r: how many n-grams have count r (r >= 1, up to ``max_r``); return {r: n_r}."""
    c = counts[counts > 0]
    if max_r is not None:
        c = c[c <= max_r]
    r, n = np.unique(c, return_counts=True)
    return {int(a): int(b) for a, b in zip(r, n)}


def katz_discounts(nr: dict[int, int], k: int = 5) -> tuple[dict[int, float], int]:
    """Katz's Good-Turing discount ratios d_r = r*/r for r <= k (renormalised so the
    discounted mass equals n1/N), with r* = (r+1) n_{r+1} / n_r.

    If the count-of-counts make some d_r fall outside (0, 1], k is lowered until they
    do not (k = 0: no discount), as SRILM does. Returns ``({r: d_r}, k used)``.
    """
    for kk in range(k, 0, -1):
        if any(nr.get(r, 0) == 0 for r in range(1, kk + 2)):
            continue
        common = (kk + 1) * nr[kk + 1] / nr[1]
        if common >= 1:
            continue
        d = {r: ((r + 1) * nr[r + 1] / nr[r] / r - common) / (1 - common) for r in range(1, kk + 1)}
        if all(0 < v <= 1 for v in d.values()):
            return d, kk
    return {}, 0


def simple_good_turing(nr: dict[int, int], confidence: float = 1.96) -> dict[int, float]:
    """Simple Good-Turing (Gale & Sampson 1995) adjusted counts r* for every observed r.

    Fits log Z_r = a + b log r with Z_r = n_r / (0.5 (t - q)) (q, t: the neighbouring
    observed r), uses the Turing estimate (r+1) n_{r+1} / n_r while it differs from the
    smoothed one r (1 + 1/r)^(b+1) by more than ``confidence`` standard deviations, and the
    smoothed one from then on. Returns {r: r*} (r* = r when fewer than two r are observed).
    """
    r = np.array(sorted(nr), dtype=np.float64)
    n = np.array([nr[int(x)] for x in r], dtype=np.float64)
    if len(r) < 2:
        return {int(x): float(x) for x in r}
    q = np.concatenate([[0.0], r[:-1]])
    t = np.concatenate([r[1:], [2 * r[-1] - r[-2]]])
    z = n / (0.5 * (t - q))
    b, _ = np.polyfit(np.log(r), np.log(z), 1)
    out: dict[int, float] = {}
    use_turing = True
    for ri, ni in zip(r, n):
        y = (ri + 1) * ((ri + 1) / ri) ** b  # (r+1) S(r+1) / S(r)
        n_next = nr.get(int(ri) + 1, 0)
        if use_turing and n_next > 0:
            x = (ri + 1) * n_next / ni
            sd = math.sqrt((ri + 1) ** 2 * n_next / ni ** 2 * (1 + n_next / ni))
            if abs(x - y) > confidence * sd:
                out[int(ri)] = x
                continue
        use_turing = False
        out[int(ri)] = y
    return out


def good_turing_discounts(nr: dict[int, int]) -> dict[int, float]:
    """Discount ratios d_r = p_r N / r of Simple Good-Turing with Gale & Sampson's
    renormalisation (seen mass 1 - n1/N), capped at 1. Returns {r: d_r}."""
    if not nr:
        return {}
    rstar = simple_good_turing(nr)
    total = sum(r * n for r, n in nr.items())
    total_star = sum(rstar[r] * n for r, n in nr.items())
    seen = total - nr.get(1, 0)
    return {r: min(1.0, seen * rstar[r] / (total_star * r)) for r in nr}


def mkn_discounts(nr: dict[int, int], order: int, fallback: bool) -> tuple[float, float, float]:
    """Chen & Goodman's modified Kneser-Ney discounts (D1, D2, D3+) from adjusted
    count-of-counts: Y = n1/(n1 + 2 n2), D_r = r - (r+1) Y n_{r+1}/n_r. Raises LmlabError
    when they are undefined or out of range, unless ``fallback`` (then lmplz's 0.5, 1, 1.5)."""
    n = [nr.get(r, 0) for r in range(5)]
    problem = None
    if any(n[r] == 0 for r in (1, 2, 3)):
        missing = next(r for r in (1, 2, 3) if n[r] == 0)
        problem = f"no {order}-grams with adjusted count {missing}"
    else:
        y = n[1] / (n[1] + 2 * n[2])
        d = tuple(r - (r + 1) * y * n[r + 1] / n[r] for r in (1, 2, 3))
        bad = [r for r, v in zip((1, 2, 3), d) if not 0 <= v <= r]
        if not bad:
            return d  # type: ignore[return-value]
        problem = f"the {order}-gram discount for count {bad[0]} is out of range ({d[bad[0] - 1]:.4g})"
    if fallback:
        return LMPLZ_FALLBACK
    raise LmlabError(f"cannot estimate modified Kneser-Ney discounts: {problem} (small or artificial "
                     "data); use a larger corpus, a lower --order, or --discount-fallback "
                     "(D1=0.5 D2=1 D3+=1.5 as lmplz)")


def kn_discount(nr: dict[int, int], order: int, fallback: bool) -> float:
    """Ney's single Kneser-Ney discount D = n1 / (n1 + 2 n2); raises LmlabError when it is
    undefined (no n-grams seen once or twice), unless ``fallback`` (then 0.5)."""
    n1, n2 = nr.get(1, 0), nr.get(2, 0)
    if n1 > 0 and n2 > 0:
        return n1 / (n1 + 2 * n2)
    if fallback:
        return LMPLZ_FALLBACK[0]
    raise LmlabError(f"cannot estimate the Kneser-Ney discount: no {order}-grams with adjusted count "
                     f"{1 if n1 == 0 else 2} (small or artificial data); use a larger corpus, a lower "
                     "--order, or --discount-fallback (D=0.5)")


def adjusted_counts(counts: NgramCounts) -> list[np.ndarray]:
    """KenLM lmplz's adjusted counts: raw counts at the top order and for n-grams starting
    with <s>, continuation counts N1+(. w) (distinct left extensions) otherwise; 0 for the
    <s> unigram. Returns one int64 array per order."""
    out = []
    N = counts.order
    for k in range(1, N + 1):
        raw = counts.counts[k - 1]
        if k == N:
            a = raw.copy()
        else:
            cont = np.bincount(counts.suffix[k], minlength=len(raw)).astype(np.int64)
            a = np.where(counts.first[k - 1] == BOS_ID, raw, cont)
        if k == 1:
            a[BOS_ID] = 0
        out.append(a)
    return out


def _apply(table: dict[int, float], c: np.ndarray, default: float = 1.0) -> np.ndarray:
    """Look up ``table[c]`` for an array of counts (``default`` where c is not in it)."""
    if not table:
        return np.full(len(c), default)
    top = max(max(table), int(c.max(initial=0)))
    lut = np.full(top + 1, default)
    for r, v in table.items():
        lut[r] = v
    return lut[c]


def _make_room(den: np.ndarray, kept: np.ndarray, types: np.ndarray, n_words: int) -> np.ndarray:
    """Denominators with room for unseen words. Where discounting leaves a context less than
    PROB_EPSILON of mass (all its counts above Katz's k) and not every word was seen after
    it, add the smallest whole number to its denominator that leaves that much: SRILM's
    retry loop (a hack it credits to Doug Paul), in closed form. Returns the new array."""
    short = (den > 0) & (kept > den * (1 - PROB_EPSILON)) & (types < n_words)
    extra = np.maximum(1.0, np.ceil(kept / (1 - PROB_EPSILON) - den))
    return np.where(short, den + extra, den)


def _log10(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log10(np.maximum(x, 0.0))


class _Discounter:
    """Per order: the discounted probability mass of each seen n-gram, numerator only
    (p* = disc(c) / denominator) for the backoff family; D(c) for the KN family."""

    def __init__(self, smoothing: str, k: float, katz_k: int, fallback: bool):
        self.smoothing, self.k, self.katz_k, self.fallback = smoothing, k, katz_k, fallback

    def info_and_amount(self, c: np.ndarray, order: int) -> tuple[dict, np.ndarray]:
        """Return (facts about this order's discounts, the numerator disc(c) or discount D(c))."""
        s = self.smoothing
        if s == "mle":
            return {}, c.astype(np.float64)
        if s == "add-k":
            return {"k": self.k}, c + self.k
        if s == "katz":
            d, used = katz_discounts(count_of_counts(c, self.katz_k + 1), self.katz_k)
            return {"k": used, "d": {r: d[r] for r in sorted(d)}}, c * _apply(d, c)
        if s == "good-turing":
            d = good_turing_discounts(count_of_counts(c))
            shown = {r: d[r] for r in sorted(d)[:5]}
            return {"d": shown}, c * _apply(d, c)
        if s == "witten-bell":
            return {}, np.zeros(len(c))
        nr = count_of_counts(c, 4)
        if s == "kn":
            D = kn_discount(nr, order, self.fallback)
            return {"D": D}, np.where(c > 0, D, 0.0)
        D1, D2, D3 = mkn_discounts(nr, order, self.fallback)
        return {"D1": D1, "D2": D2, "D3+": D3}, np.select([c == 0, c == 1, c == 2], [0.0, D1, D2], D3)


def estimate(counts: NgramCounts, smoothing: str, *, k: float = 1.0, katz_k: int = 5,
             discount_fallback: bool = False) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Estimate log10 probabilities for every counted n-gram and log10 backoff weights for
    every n-gram below the top order. Returns ``(logprob per order, backoff per order
    1..N-1, info)`` where info holds the discounts per order."""
    if smoothing == "add-k" and not k > 0:
        raise LmlabError(f"add-k needs k > 0 (got {k}); use e.g. --k 1 or --k 0.1")
    V, N = counts.V, counts.order
    n_words = V - 1  # every id but <s>
    use = adjusted_counts(counts) if smoothing in ("kn", "mkn") else \
        [c.copy() for c in counts.counts]
    use[0][BOS_ID] = 0
    interpolated = smoothing in INTERPOLATED
    disc = _Discounter(smoothing, k, katz_k, discount_fallback)
    info: dict = {"smoothing": smoothing, "orders": []}

    # Unigrams: the context is empty, the lower order is uniform over the n_words words.
    c = use[0]
    facts, amount = disc.info_and_amount(c, 1)
    info["orders"].append(facts)
    total = float(c.sum())
    seen = c > 0
    if interpolated:
        if smoothing == "witten-bell":
            types = float(seen.sum())
            p = (c + types / n_words) / (total + types)
        else:
            gamma = float(amount[seen].sum()) / total
            p = np.where(seen, (c - amount) / total, 0.0) + gamma / n_words
    else:
        denom = total + (smoothing == "add-k") * k * n_words
        if smoothing in ("katz", "good-turing"):
            denom = float(_make_room(np.array([total]), np.array([amount[seen].sum()]),
                                     np.array([seen.sum()]), n_words)[0])
        p = np.where(seen, amount / denom, 0.0)
        unseen = ~seen
        unseen[BOS_ID] = False
        if unseen.any():
            p[unseen] = max(0.0, 1.0 - float(p.sum())) / unseen.sum()
        elif p.sum() > 0:
            p = p / p.sum()
    p[BOS_ID] = 1.0  # never predicted; log10 0 as lmplz writes it
    probs = [p]
    backoffs: list[np.ndarray] = []

    for order in range(2, N + 1):
        keys, c = counts.keys[order - 1], use[order - 1]
        ctx = keys // V
        n_ctx = len(counts.keys[order - 2])
        lower = probs[-1][counts.suffix[order - 1]]
        facts, amount = disc.info_and_amount(c, order)
        info["orders"].append(facts)
        den = np.bincount(ctx, weights=c, minlength=n_ctx)
        is_ctx = den > 0
        safe_den = np.where(is_ctx, den, 1.0)
        if smoothing == "witten-bell":
            types = np.bincount(ctx, minlength=n_ctx).astype(np.float64)
            gamma = types / (safe_den + types)
            p = (c + types[ctx] * lower) / (den[ctx] + types[ctx])
            bo = np.where(is_ctx, gamma, 1.0)
        elif interpolated:
            gamma = np.bincount(ctx, weights=amount, minlength=n_ctx) / safe_den
            p = (c - amount) / den[ctx] + gamma[ctx] * lower
            bo = np.where(is_ctx, gamma, 1.0)
        else:
            if smoothing == "add-k":
                den = den + k * n_words
            elif smoothing in ("katz", "good-turing"):
                den = _make_room(den, np.bincount(ctx, weights=amount, minlength=n_ctx),
                                 np.bincount(ctx, minlength=n_ctx), n_words)
            p = amount / den[ctx]
            seen_mass = np.bincount(ctx, weights=p, minlength=n_ctx)
            seen_lower = np.bincount(ctx, weights=lower, minlength=n_ctx)
            left = 1.0 - seen_mass
            room = 1.0 - seen_lower
            ok = is_ctx & (left > 1e-12) & (room > 1e-12)
            alpha = np.where(ok, left / np.where(ok, room, 1.0), 0.0)
            # No lower-order mass left for the unseen words: give the left-over to the seen ones.
            stuck = is_ctx & ~ok & (seen_mass > 0)
            scale = np.where(stuck, 1.0 / np.where(stuck, seen_mass, 1.0), 1.0)
            p = p * scale[ctx]
            bo = np.where(is_ctx, alpha, 1.0)
        probs.append(p)
        backoffs.append(bo)
    logprob = [_log10(p) for p in probs]
    logprob[0][BOS_ID] = 0.0
    return logprob, [_log10(b) for b in backoffs], info
