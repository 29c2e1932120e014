"""How long one request waited for a batch and spent in the engine, for TEI's timing headers.

A contextvar rather than an argument: the batcher sits below the handlers, and tasks copy the
context they start in, so the handler's work reaches the same object without threading it
through every call. service/request_context.py sets one per request and writes the headers;
this module imports no HTTP library, so the model host and the batcher can fill it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class RequestTiming:
    """Seconds one request spent waiting for a batch and in the engine (summed over batches
    when its sentences were split)."""

    queue_s: float = 0.0
    inference_s: float = 0.0


current_timing: ContextVar[RequestTiming | None] = ContextVar("current_timing", default=None)
"""The timing of the request being handled; None outside one (the CLI, warm-up, probes)."""
