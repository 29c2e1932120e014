"""Prometheus metrics, declared once, in a registry owned by one app instance.

Names follow Prometheus conventions (``_seconds``, ``_total``) under the ``electric_`` prefix.
Label values are bounded: endpoints are the fixed route table (anything else is ``other``),
reasons are the error types of service/errors.py. Queue wait, inference and end-to-end time are
separate histograms so a dashboard can tell a saturated queue from a slow model.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

# Seconds: from sub-millisecond CPU batches of tiny models to multi-second queues at the
# default 10 s deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
REJECTION_REASONS = ("invalid_input", "unauthorized", "payload_too_large", "overloaded",
                     "inference_failed", "not_ready", "deadline_exceeded", "client_gone",
                     "request_timeout", "bad_request", "header_too_large",
                     "too_many_connections")
FAILURE_KINDS = ("batch_error", "non_finite_row")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "electric_requests", "HTTP requests answered, by route and status code.",
            ["endpoint", "status"], registry=r)
        self.request_duration = Histogram(
            "electric_request_duration_seconds", "End-to-end HTTP request time, by route.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "electric_queue_wait_seconds", "Time a sequence waits in the queue before its batch.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inference_duration = Histogram(
            "electric_inference_duration_seconds", "Engine time per batch.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "electric_batch_size", "Sequences per batch.", buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "electric_batch_tokens",
            "Tokens per batch: real (specials included) or padded (n_seqs x max_len).",
            ["kind"], buckets=BATCH_TOKEN_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "electric_queue_depth", "Sequences waiting for a batch (the autoscaling signal).",
            registry=r)
        self.in_flight = Gauge(
            "electric_in_flight_requests", "HTTP requests being handled.", registry=r)
        self.tokens_scored = Counter(
            "electric_tokens_scored", "Tokens that got an energy in a response.", registry=r)
        self.rejections = Counter(
            "electric_rejections", "Requests refused, by reason.", ["reason"], registry=r)
        self.inference_failures = Counter(
            "electric_inference_failures",
            "Inference failures: batches the engine raised on (kind=batch_error) and rows it "
            "returned non-finite energies for (kind=non_finite_row); their requests got 500.",
            ["kind"], registry=r)
        self.ready = Gauge(
            "electric_ready", "1 while this replica takes requests (loaded, warmed up, engine "
            "healthy, not draining), else 0: what /readyz answers, as a series.", registry=r)
        self.model_info = Gauge(
            "electric_model_info", "The model being served (value is always 1).",
            ["name", "variant", "provider"], registry=r)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason=reason)
        for kind in ("real", "padded"):
            self.batch_tokens.labels(kind=kind)
        for kind in FAILURE_KINDS:
            self.inference_failures.labels(kind=kind)

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason=reason if reason in REJECTION_REASONS else "other").inc()

    def observe_batch(self, n_seqs: int, real_tokens: int, padded_tokens: int,
                      seconds: float) -> None:
        self.batch_size.observe(n_seqs)
        self.batch_tokens.labels(kind="real").observe(real_tokens)
        self.batch_tokens.labels(kind="padded").observe(padded_tokens)
        self.inference_duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
