"""Prometheus metrics (per-app registry). Labels never carry identifiers: routes are templates
(``/v1/predictions/{prediction_id}``), not raw paths."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ich_http_requests_total", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.request_latency = Histogram("ich_http_request_seconds", "HTTP request latency by route template",
                                         ["route"], buckets=STAGE_BUCKETS, registry=r)
        self.stage_latency = Histogram("ich_stage_seconds", "Prediction latency per stage",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.predictions = Counter("ich_predictions_total", "Prediction requests by outcome code",
                                   ["outcome"], registry=r)
        self.in_flight = Gauge("ich_predictions_in_flight", "Admitted prediction requests (queue depth)",
                               registry=r)
        self.inference_queue = Gauge("ich_inference_queue_depth", "Requests waiting for or in the model",
                                     registry=r)
        self.unhandled = Counter("ich_unhandled_errors_total", "Exceptions no handler claimed (answered 500)",
                                 ["route", "error_type"], registry=r)
        self.backstop = Counter("ich_ingestion_backstop_total", "Library exceptions that escaped ingestion of "
                                "client data (answered 422 invalid_dicom)", ["stage", "error_type"], registry=r)
        self.oom = Counter("ich_out_of_memory_total", "Device out-of-memory errors", registry=r)
        self.rejected = Counter("ich_rejected_total", "Requests refused for capacity", ["reason"], registry=r)
        self.ready = Gauge("ich_ready", "1 when the model is loaded and warm", registry=r)
        self.model = Info("ich_model", "Served model", registry=r)
        self.store_items = Gauge("ich_result_store_items", "Results held in the store", registry=r)
        self.store_bytes = Gauge("ich_result_store_bytes", "Bytes held in the result store", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
