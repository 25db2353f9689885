"""Prometheus metrics, one registry per application (no process globals)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from router.core.model import CaseStatus


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.inbound = Counter(
            "switchboard_inbound_messages", "Inbound messages by channel and outcome", ["channel", "outcome"],
            registry=self.registry,
        )
        self.ingest_latency = Histogram(
            "switchboard_ingest_seconds", "Time from hand-over to durable storage", ["channel"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.outbound = Counter(
            "switchboard_outbound_messages", "Outbound delivery attempts by channel and resulting status",
            ["channel", "status"], registry=self.registry,
        )
        self.cases = Gauge("switchboard_cases", "Cases by status", ["status"], registry=self.registry)
        self._ingest_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self.rejected = Counter(
            "switchboard_inbound_rejected", "Inbound requests refused, by channel and reason", ["channel", "reason"],
            registry=self.registry,
        )

    def observe_ingest(self, channel: str, outcome: str, seconds: float) -> None:
        # The labelled children are looked up once per label set: labels() takes a lock and builds keys each call.
        children = self._ingest_children.get((channel, outcome))
        if children is None:
            children = self._ingest_children[(channel, outcome)] = (
                self.inbound.labels(channel, outcome), self.ingest_latency.labels(channel)
            )
        children[0].inc()
        children[1].observe(seconds)

    def set_case_counts(self, counts: dict[str, int]) -> None:
        for status in CaseStatus:
            self.cases.labels(status.value).set(counts.get(status.value, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
