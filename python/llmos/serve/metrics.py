"""The server's Prometheus metrics (/metrics), in a registry of its own per app: counted by the
HTTP layer (requests by outcome, tokens, latencies) or read from each engine's stats() at scrape
time (queue, KV blocks, prefix cache), so a scrape never waits on a decode step."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

OUTCOMES = ("completed", "rejected", "invalid", "cancelled", "error")

# Latencies of a CPU runtime: milliseconds for a decode step, up to tens of seconds for a
# long prompt queued behind others.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, engines):
        """engines: a callable giving {model name: engine} of the models loaded now."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("llmos_requests", "Requests by route and outcome", ["model", "route", "outcome"],
                                registry=r)
        self.prompt_tokens = Counter("llmos_prompt_tokens", "Prompt tokens of completed requests", ["model"],
                                     registry=r)
        self.generation_tokens = Counter("llmos_generation_tokens", "Tokens generated (completed requests)",
                                         ["model"], registry=r)
        self.ttft = Histogram("llmos_time_to_first_token_seconds", "From admission to the first generated token",
                              ["model"], buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("llmos_inter_token_latency_seconds", "Between consecutive streamed pieces, per token",
                             ["model"], buckets=_ITL_BUCKETS, registry=r)
        r.register(_EngineStats(engines))

    def outcome(self, model: str, route: str, outcome: str) -> None:
        self.requests.labels(model=model, route=route, outcome=outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineStats:
    """Gauges read from engine.stats() at each scrape."""

    _GAUGES = (("running", "llmos_requests_running", "Sequences decoding now"),
               ("waiting", "llmos_requests_waiting", "Requests queued in the engine"),
               ("kv_blocks_total", "llmos_kv_blocks_total", "KV cache blocks in the pool"),
               ("kv_blocks_used", "llmos_kv_blocks_used", "KV cache blocks held by running sequences"),
               ("kv_blocks_cached", "llmos_kv_blocks_cached", "Unreferenced KV blocks kept for the prefix cache"),
               ("preemptions", "llmos_preemptions", "Sequences preempted (to be recomputed) so far"))

    def __init__(self, engines):
        self._engines = engines

    def describe(self):
        return []

    def collect(self):
        stats = {name: e.stats() for name, e in self._engines().items()}
        for key, metric, doc in self._GAUGES:
            g = GaugeMetricFamily(metric, doc, labels=["model"])
            for name, s in stats.items():
                g.add_metric([name], float(s.get(key, 0)))
            yield g
        rate = GaugeMetricFamily("llmos_prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / looked up",
                                 labels=["model"])
        for name, s in stats.items():
            queries = s.get("prefix_queries", 0)
            rate.add_metric([name], s.get("prefix_hits", 0) / queries if queries else 0.0)
        yield rate
