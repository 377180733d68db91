"""Prometheus metrics of the service, in a registry of its own (one per app), served at GET /metrics.

    mvmic_requests_total{route, method, status}     requests answered
    mvmic_request_seconds{route}                    latency, upload to last byte
    mvmic_model_seconds{work}                       model and entropy coding time per call
    mvmic_queue_wait_seconds                        time a job waited for a model worker
    mvmic_batch_size                                images per model call
    mvmic_model_jobs_waiting{work}                  jobs queued for a model worker now (gauge)
    mvmic_model_jobs_running{work}                  jobs a model worker runs now, each image of a batch (gauge)
    mvmic_model_workers, mvmic_model_torch_threads  model worker threads; torch threads of each (gauges)
    mvmic_body_bytes_total{route, direction}        bytes in (request bodies) and out (responses)
    mvmic_bits_per_pixel{mode}                      rate of every compressed image
    mvmic_gateway_instances_total{outcome}          STOW-RS instances sent on to the PACS or failed
    mvmic_gateway_bytes_total{kind}                 their bytes as received and as sent to the PACS
"""

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BPP_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 3, 4, 6, 8, 12, 16)


def route_of(request: Request) -> str:
    """The route template that answers ``request`` (e.g. /dicomweb/studies/{study}), or 'unmatched': the label
    of its metrics and the name in its log lines. Never the raw path, which holds UIDs and would make a
    series per study."""
    route = request.scope.get("route")
    return route.path if route is not None else "unmatched"


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mvmic_requests", "Requests answered", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("mvmic_request_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.model_seconds = Histogram("mvmic_model_seconds", "Model compute time per call", ["work"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram("mvmic_queue_wait_seconds", "Wait for a model worker",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.jobs_waiting = Gauge("mvmic_model_jobs_waiting", "Jobs queued for a model worker", ["work"],
                                  registry=self.registry)
        self.jobs_running = Gauge("mvmic_model_jobs_running", "Jobs running on a model worker", ["work"],
                                  registry=self.registry)
        self.workers = Gauge("mvmic_model_workers", "Model worker threads", registry=self.registry)
        self.torch_threads = Gauge("mvmic_model_torch_threads", "Torch intra-op threads of each model worker",
                                   registry=self.registry)
        self.batch_size = Histogram("mvmic_batch_size", "Images per model call", buckets=(1, 2, 4, 8, 16, 32),
                                    registry=self.registry)
        self.body_bytes = Counter("mvmic_body_bytes", "Body bytes", ["route", "direction"], registry=self.registry)
        self.bits_per_pixel = Histogram("mvmic_bits_per_pixel", "Rate of compressed images", ["mode"],
                                        buckets=BPP_BUCKETS, registry=self.registry)
        self.stored = Counter("mvmic_gateway_instances", "STOW-RS instances", ["outcome"], registry=self.registry)
        self.gateway_bytes = Counter("mvmic_gateway_bytes", "STOW-RS bytes received and sent to the PACS", ["kind"],
                                     registry=self.registry)
