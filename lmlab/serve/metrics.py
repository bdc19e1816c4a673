"""The engine's counters and latency histograms, rendered in Prometheus' text format (``GET /metrics``)."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative-bucket histogram as Prometheus defines it (``le`` upper bounds, then ``+Inf``)."""

    def __init__(self, buckets: tuple[float, ...]):
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value``."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        """The ``NAME_bucket``, ``NAME_sum`` and ``NAME_count`` samples."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{le}"}} {total}')
        return [*out, f"{name}_sum {self.sum:.6f}", f"{name}_count {total}"]


class Metrics:
    """What the engine counts: finished requests by reason, prompt and generated tokens, the batch
    size of every decode step, time to first token and time per later token (seconds)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finished: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.inter_token = Histogram(TOKEN_BUCKETS)

    def render(self, running: int, waiting: int) -> str:
        """Return every metric in Prometheus' text exposition format, with the current queue gauges."""
        p = "lmlab_"
        with self.lock:
            lines = [f"# HELP {p}requests_total Requests finished, by finish reason.",
                     f"# TYPE {p}requests_total counter"]
            lines += [f'{p}requests_total{{finish_reason="{r}"}} {n}'
                      for r, n in sorted(self.finished.items())]
            for name, value, what, kind in (
                    ("prompt_tokens_total", self.prompt_tokens, "Prompt tokens prefilled.", "counter"),
                    ("generation_tokens_total", self.generation_tokens, "Tokens generated.", "counter"),
                    ("requests_running", running, "Requests in the running batch.", "gauge"),
                    ("requests_waiting", waiting, "Requests waiting in the queue.", "gauge")):
                lines += [f"# HELP {p}{name} {what}", f"# TYPE {p}{name} {kind}", f"{p}{name} {value}"]
            for name, hist, what in (
                    ("batch_size", self.batch_size, "Requests in each decode step."),
                    ("time_to_first_token_seconds", self.ttft, "From submission to the first token."),
                    ("time_per_output_token_seconds", self.inter_token, "Between two tokens of a request.")):
                lines += [f"# HELP {p}{name} {what}", f"# TYPE {p}{name} histogram", *hist.lines(p + name)]
        return "\n".join(lines) + "\n"
