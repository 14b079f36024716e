"""``GET /metrics``: the server's counters in Prometheus' text format, as vLLM and TGI expose theirs.

Every server has its own registry (two apps in one process, as the tests run them, do not share counts). Counts
come from three places: the request log (``RequestLog`` calls ``request_done`` once a response has been sent
whole, with what the route noted: tokens, inputs), the decoder and the embedding batcher (batch sizes, time to
first token), and values read when scraped (requests in progress and in line, work waiting for the model, seconds
the model was busy).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

ROUTES = ("/health", "/metrics", "/v1/models", "/v1/embeddings", "/v1/chat/completions", "/v1/completions",
          "/v1/rag")  # fmt: skip
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def route_label(path: str) -> str:
    """A bounded label for a request path: one of ``ROUTES``, ``/v1/models/{id}``, or ``other`` (a label per
    unknown path would let any client grow the registry without limit)."""
    if path in ROUTES:
        return path
    return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"


class ReadCounter:
    """A counter whose value is read when scraped (``Gauge.set_function``'s counterpart, which prometheus_client's
    ``Counter`` lacks)."""

    def __init__(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self.name, self.doc, self.read = name, doc, read

    def collect(self):
        yield CounterMetricFamily(self.name, self.doc, value=self.read())


class Metrics:
    def __init__(self, server) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("grit_requests", "HTTP requests answered", ["route", "status"], registry=registry)
        self.latency = Histogram("grit_request_duration_seconds", "time from request to the last byte sent",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        self.tokens = Counter("grit_tokens", "tokens processed", ["kind"], registry=registry)
        self.embedding_inputs = Counter("grit_embedding_inputs", "texts embedded", registry=registry)
        self.first_token = Histogram("grit_time_to_first_token_seconds", "prefill and first token of a generation",
                                     buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        self.decode_batch = Histogram("grit_decode_batch_size", "generations in one decoding step",
                                      buckets=BATCH_BUCKETS, registry=registry)  # fmt: skip
        self.embed_batch = Histogram("grit_embedding_batch_texts", "texts in one embedding batch",
                                     buckets=BATCH_BUCKETS, registry=registry)  # fmt: skip
        gauges = {
            "grit_requests_in_progress": ("requests admitted and not yet answered", lambda: server.admission.inside),
            "grit_requests_waiting": ("requests waiting in line for admission", lambda: server.admission.waiting),
            "grit_model_waiting": ("threads waiting for the model (prefills, embedding batches, decoding)",
                                   lambda: server.gate.waiting),
            "grit_generations_active": ("generations being decoded or joining the batch",
                                        lambda: getattr(server.gate, "active", 0)),
        }  # fmt: skip
        for name, (doc, read) in gauges.items():
            Gauge(name, doc, registry=registry).set_function(read)
        registry.register(ReadCounter("grit_model_busy_seconds", "seconds the model was held (forward passes, "
                                      "decoding steps); its rate is the share of time it computes",
                                      lambda: server.gate.busy_s))  # fmt: skip

    def request_done(self, method: str, path: str, status: int, seconds: float, noted: dict) -> None:
        route = route_label(path)
        self.requests.labels(route, str(status or 0)).inc()
        self.latency.labels(route).observe(seconds)
        if route == "/v1/embeddings":
            self.tokens.labels("embedding").inc(noted.get("tokens", 0))
            self.embedding_inputs.inc(noted.get("inputs", 0))
        else:
            self.tokens.labels("prompt").inc(noted.get("prompt_tokens", 0))
            self.tokens.labels("completion").inc(noted.get("completion_tokens", 0))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
