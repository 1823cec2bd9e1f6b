"""Prometheus metrics of the DICOM listener, the analysis of received series and the destinations, registered in
the service's registry (so ``/metrics`` shows them). Labels carry outcome codes and destination labels
(``AET@host:port`` or a credential-free URL), never identifiers of patients, studies or series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.api.metrics import STAGE_BUCKETS


class DicomMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.associations = Counter("ich_dicom_associations_total", "DICOM associations by outcome "
                                    "(accepted, rejected)", ["outcome"], registry=r)
        self.instances = Counter("ich_dicom_instances_total", "C-STORE requests by outcome (stored, resent, "
                                 "sop_class_not_supported, not_ct, cannot_understand, association_bytes, "
                                 "association_instances, series_per_study, spool_error)", ["outcome"], registry=r)
        self.series = Counter("ich_dicom_series_total", "Received series by outcome: analysed, already_analysed, "
                              "or the refusal code", ["outcome"], registry=r)
        self.spooled_series = Gauge("ich_dicom_spooled_series", "Received series waiting to become stable",
                                    registry=r)
        self.receive_to_result = Histogram("ich_dicom_stable_to_queued_seconds", "From a series becoming stable "
                                           "to its results queued for the destinations", buckets=STAGE_BUCKETS,
                                           registry=r)
        self.destination_sent = Counter("ich_dicom_destination_objects_sent_total", "Result objects stored at a "
                                        "destination", ["destination"], registry=r)
        self.destination_failures = Counter("ich_dicom_destination_failures_total", "Failed send attempts "
                                            "(retried)", ["destination"], registry=r)
        self.destination_given_up = Counter("ich_dicom_destination_given_up_total", "Jobs moved to failed/ after "
                                            "the last attempt", ["destination"], registry=r)
        self.destination_latency = Histogram("ich_dicom_destination_send_seconds", "Duration of a successful "
                                             "send", ["destination"], buckets=STAGE_BUCKETS, registry=r)
        self.outbox_pending = Gauge("ich_dicom_outbox_pending", "Jobs waiting in the outbox", ["destination"],
                                    registry=r)
