"""Prometheus metrics, one registry per app (no process-global collectors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Requests and latency per endpoint; webhook events received and applied."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "labelloop_http_requests",
            "HTTP requests by endpoint, method and status.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "labelloop_http_request_duration_seconds",
            "HTTP request latency by endpoint.",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
            registry=self.registry,
        )
        self.events_received = Counter(
            "labelloop_webhook_events_received",
            "Webhook deliveries stored, by project and action (duplicates excluded).",
            ["project", "action"],
            registry=self.registry,
        )
        self.events_duplicate = Counter(
            "labelloop_webhook_events_duplicate",
            "Webhook deliveries that repeated one already stored.",
            ["project", "action"],
            registry=self.registry,
        )
        self.events_applied = Counter(
            "labelloop_webhook_events_applied",
            "Stored webhook events applied to the store, by project and action.",
            ["project", "action"],
            registry=self.registry,
        )

        self.events_unknown_project = Counter(
            "labelloop_webhook_events_unknown_project",
            "Webhook deliveries for projects this backend was never set up for (ignored).",
            registry=self.registry,
        )
        self.inbox_set_aside = Gauge(
            "labelloop_inbox_set_aside_events",
            "Stored events set aside after failing to apply (labelloop inbox retry).",
            registry=self.registry,
        )
        self.inbox_retries = Counter(
            "labelloop_inbox_transient_retries",
            "Inbox transactions rolled back on a transient database error and tried again.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
