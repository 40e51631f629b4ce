"""Custom Prometheus metrics of the service, through Ray Serve's metrics API.

``ray.serve.metrics`` adds the ``deployment``, ``replica`` and ``application`` tags itself, and
Ray exports every metric on the node's metrics export port with a ``ray_`` prefix, next to
Serve's built-in ``ray_serve_*`` series (``deepfix_requests`` is scraped as
``ray_deepfix_requests_total``). Each deployment builds its metrics once, in ``__init__``.
"""

from __future__ import annotations

from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "BYTES_BUCKETS",
    "FACES_BUCKETS",
    "LATENCY_MS_BUCKETS",
    "METRIC_NAMES",
    "EnhancerMetrics",
    "IngressMetrics",
]

# Boundaries must be positive for Ray; counts use half-integers so that 0, 1, 2 ... land in
# their own buckets.
LATENCY_MS_BUCKETS = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1e3, 2.5e3, 5e3, 1e4, 3e4]
BATCH_SIZE_BUCKETS = [1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5]
FACES_BUCKETS = [0.5, 1.5, 2.5, 3.5, 4.5, 8.5, 16.5]
BYTES_BUCKETS = [16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6]

METRIC_NAMES = (
    "deepfix_requests",
    "deepfix_request_latency_ms",
    "deepfix_input_bytes",
    "deepfix_batch_size",
    "deepfix_batch_inference_ms",
    "deepfix_faces_per_image",
    "deepfix_model_info",
    "deepfix_model_swaps",
)


def _tags(*keys: str) -> Any:
    # Ray annotates tag_keys as Tuple[str] (a 1-tuple) though it takes any tuple of names.
    return keys


class IngressMetrics:
    """What the HTTP ingress records per request."""

    def __init__(self) -> None:
        self.requests = Counter(
            "deepfix_requests",
            description="HTTP requests by endpoint and status code.",
            tag_keys=_tags("endpoint", "status"),
        )
        self.latency_ms = Histogram(
            "deepfix_request_latency_ms",
            description="Time from request to response in the ingress, milliseconds.",
            boundaries=LATENCY_MS_BUCKETS,
            tag_keys=_tags("endpoint"),
        )
        self.input_bytes = Histogram(
            "deepfix_input_bytes",
            description="Size of uploaded images, bytes.",
            boundaries=BYTES_BUCKETS,
            tag_keys=_tags("endpoint"),
        )

    def request(self, endpoint: str, status: int, latency_ms: float) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self.latency_ms.observe(latency_ms, tags={"endpoint": endpoint})

    def upload(self, endpoint: str, size: int) -> None:
        self.input_bytes.observe(size, tags={"endpoint": endpoint})


class EnhancerMetrics:
    """What the enhancer records per batch, per image and per model swap."""

    def __init__(self) -> None:
        self.batch_size = Histogram(
            "deepfix_batch_size",
            description="Requests merged into one model call by @serve.batch.",
            boundaries=BATCH_SIZE_BUCKETS,
        )
        self.batch_ms = Histogram(
            "deepfix_batch_inference_ms",
            description="Model time of one batch, milliseconds.",
            boundaries=LATENCY_MS_BUCKETS,
        )
        self.faces = Histogram(
            "deepfix_faces_per_image",
            description="Faces found per image (detect and faces-only enhance).",
            boundaries=FACES_BUCKETS,
            tag_keys=_tags("endpoint"),
        )
        self.model_info = Gauge(
            "deepfix_model_info",
            description="1 for the model version a replica serves now, 0 for ones it served.",
            tag_keys=_tags("model", "version"),
        )
        self.swaps = Counter(
            "deepfix_model_swaps",
            description="Model versions loaded after startup because an alias moved.",
            tag_keys=_tags("model"),
        )

    def batch(self, size: int, model_ms: float) -> None:
        self.batch_size.observe(size)
        self.batch_ms.observe(model_ms)

    def faces_found(self, endpoint: str, count: int) -> None:
        self.faces.observe(count, tags={"endpoint": endpoint})

    def serving(self, model: str, version: int, previous: int | None) -> None:
        if previous is not None and previous != version:
            self.model_info.set(0, tags={"model": model, "version": str(previous)})
            self.swaps.inc(tags={"model": model})
        self.model_info.set(1, tags={"model": model, "version": str(version)})
