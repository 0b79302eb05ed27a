"""`/metrics`: the server's state and latencies in Prometheus' text format, through
prometheus_client (its registry, metric types and exposition; nothing written by hand).

Per model (label `model`): requests running in the batch and waiting for it, KV cache held
and its bound, tokens generated (a counter: its rate is tokens/s), preemptions, and two
histograms of the running batch's requests: time to first token (from the request's arrival
at the worker to its first token) and inter-token latency (between one step's token of a
prompt's choices and the next). Gauges are read when scraped, from the worker and its engine,
so the model's thread does no bookkeeping for them.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (the route's media type)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# seconds: a CPU step is milliseconds to a second; a first token waits for admission as well
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    """The app's metrics, in a registry of its own (several apps in one process, as in
    tests, do not collide)."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        model = ["model"]
        self.running = Gauge("lmgen_requests_running", "requests in the running batch", model,
                             registry=r)  # fmt: skip
        self.waiting = Gauge("lmgen_requests_waiting",
                             "requests waiting: for the worker, or for room in the batch", model,
                             registry=r)  # fmt: skip
        self.kv_used = Gauge("lmgen_kv_cache_used_bytes", "KV cache the batch's rows hold",
                             model, registry=r)  # fmt: skip
        self.kv_capacity = Gauge("lmgen_kv_cache_capacity_bytes",
                                 "the KV cache's bound (--kv-cache-mb); 0 when unbounded", model,
                                 registry=r)  # fmt: skip
        self.generated = Counter("lmgen_generated_tokens", "tokens generated in the batch",
                                 model, registry=r)  # fmt: skip
        self.preemptions = Counter("lmgen_preemptions",
                                   "requests preempted for lack of KV cache (recomputed later)",
                                   model, registry=r)  # fmt: skip
        self.ttft = Histogram("lmgen_time_to_first_token_seconds",
                              "from a request's arrival to its first token", model,
                              buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.itl = Histogram("lmgen_inter_token_latency_seconds",
                             "between consecutive tokens of a request's choices", model,
                             buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip

    def watch(self, name: str, worker) -> ModelMetrics:
        """Reads `worker`'s state at each scrape; returns what its engine reports to."""
        engine = worker.engine

        def waiting() -> int:
            return worker.load()["waiting"] + (len(engine.waiting) if engine else 0)

        self.running.labels(name).set_function(lambda: len(engine.running) if engine else 0)
        self.waiting.labels(name).set_function(waiting)
        self.kv_used.labels(name).set_function(lambda: engine.kv_bytes_in_use() if engine else 0)
        self.kv_capacity.labels(name).set_function(
            lambda: (engine.kv_cache_bytes or 0) if engine else 0
        )
        return ModelMetrics(self, name)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """What one model's engine reports: each group's session step (tokens, latencies) and
    preemptions."""

    def __init__(self, metrics: ServerMetrics, name: str):
        self.generated = metrics.generated.labels(name)
        self.preemptions = metrics.preemptions.labels(name)
        self.ttft = metrics.ttft.labels(name)
        self.itl = metrics.itl.labels(name)

    def tokens(self, group, out) -> None:
        """A group's step gave `out` (a `StepOutput`)."""
        n = sum(len(t) for t in out.tokens)
        if not n:
            return
        now = time.monotonic()
        self.generated.inc(n)
        job = group.job
        if job.first_token_at is None:
            job.first_token_at = now
            self.ttft.observe(now - job.created)
        if group.last_token_at is not None:
            self.itl.observe(now - group.last_token_at)
        group.last_token_at = now

    def preempted(self) -> None:
        self.preemptions.inc()
