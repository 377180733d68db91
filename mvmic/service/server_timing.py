"""The Server-Timing header (W3C Server Timing) of the codec routes: how long the service worked on a request,
by step, so that a client (the page under /ui/, a browser's developer tools) can tell the codec's time from the
network's.

    Server-Timing: encode;dur=12.4, analysis;dur=38.0      (durations in milliseconds, as the standard has them)

Each step is timed around its job on the model workers, so it includes the time the job waited in their queue.
"""

import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class ServerTiming:
    """The steps of one request, in the order they ran; ``headers`` holds their Server-Timing header."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    async def measure(self, step: str, job: Awaitable[T]) -> T:
        """``job``'s result, its wall time recorded as ``step`` (a token: letters, digits, '-')."""
        started = time.perf_counter()
        try:
            return await job
        finally:
            self.steps.append((step, 1000 * (time.perf_counter() - started)))

    @property
    def headers(self) -> dict[str, str]:
        return {"Server-Timing": ", ".join(f"{step};dur={ms:.1f}" for step, ms in self.steps)} if self.steps else {}
