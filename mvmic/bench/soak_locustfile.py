"""The clients of `mvmic bench soak`, run by locust in its own process (gevent's monkey patching stays there).

    MVMIC_SOAK_REQUESTS=requests.json, written by mvmic.bench.soak: the routes, each with its bodies (files
    beside it, with their Content-Type; sent in turn), Accept, and the status and media type its
    answers must have
    --> each client sends the routes in turn, client n starting at route n (so every route is busy from
        the first second, even with fewer clients than routes), with no think time: its next request
        goes as soon as its last one is answered

A request fails (locust records it per route) when the answer is not the route's status (200: a STOW
that stored only some instances answers 202, and fails here), is not of the route's media type, or
does not come within the client timeout.

When the clients have stopped (locust's test_stop: after --stop-timeout, every request answered or
timed out), the final statistics go to the spec's "results" file as JSON, per route and in all:
requests, failures, latency percentiles (locust's), requests/s, and the failures by error. Locust's
own CSV is rewritten once a second while it runs and misses what ends in its last second.

Standard library and locust only: this file is not imported by the project.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path

from locust import HttpUser, constant, events, task
from locust.env import Environment
from locust.stats import StatsEntry

SPEC_VARIABLE = "MVMIC_SOAK_REQUESTS"


def _spec() -> tuple[dict, Path]:
    if SPEC_VARIABLE not in os.environ:  # not started by mvmic.bench.soak: no routes
        return {"routes": [], "timeout_s": 0, "results": None}, Path()
    path = Path(os.environ[SPEC_VARIABLE])
    return json.loads(path.read_text()), path.parent


def _sender(route: dict, folder: Path, timeout_s: float) -> Callable[[HttpUser], None]:
    """Sends one request of ``route`` (its next body) and records whether the answer is the one expected."""
    bodies = itertools.cycle([((folder / body["file"]).read_bytes(), {"Content-Type": body["content_type"]})
                              for body in route["bodies"]] or [(None, {})])

    def send(user: HttpUser) -> None:
        data, headers = next(bodies)
        with user.client.request(route["method"], route["path"], data=data, name=route["name"], timeout=timeout_s,
                                 headers={**headers, "Accept": route["accept"]}, catch_response=True) as response:
            media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if response.status_code != route["status"]:
                response.failure(f"status {response.status_code} (expected {route['status']}): {response.text[:200]}")
            elif media_type != route["media_type"]:
                response.failure(f"media type {media_type!r} (expected {route['media_type']!r})")
            else:
                response.success()

    return send


SPEC, FOLDER = _spec()
SENDERS = [_sender(route, FOLDER, SPEC["timeout_s"]) for route in SPEC["routes"]]
_CLIENTS = itertools.count()


class SoakClient(HttpUser):
    """One client of the service: compress, decompress, analyze, STOW-RS and WADO-RS, one after the other."""

    wait_time = constant(0)

    def on_start(self) -> None:
        start = next(_CLIENTS) % max(1, len(SENDERS))
        self.senders = itertools.cycle(SENDERS[start:] + SENDERS[:start])

    @task
    def next_route(self) -> None:
        next(self.senders)(self)


@events.test_stop.add_listener
def _write_results(environment: Environment, **_: object) -> None:
    if SPEC["results"] is None:
        return
    stats = environment.stats
    results = {"routes": [_entry(entry) for entry in stats.entries.values()], "all": _entry(stats.total),
               "failures": [{"route": error.name, "error": str(error.error), "occurrences": error.occurrences}
                            for error in stats.errors.values()]}
    Path(SPEC["results"]).write_text(json.dumps(results, indent=1) + "\n")


def _entry(entry: StatsEntry) -> dict:
    return {"route": entry.name, "requests": entry.num_requests, "failures": entry.num_failures,
            **{f"p{percent}_ms": entry.get_response_time_percentile(percent / 100) for percent in (50, 95, 99)},
            "max_ms": entry.max_response_time, "mean_ms": entry.avg_response_time, "requests_per_s": entry.total_rps}
