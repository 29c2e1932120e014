"""Run the app under uvicorn: one process, one model (replicas scale out, not workers).

SIGTERM (Kubernetes stopping the pod) drains instead of cutting: /readyz turns 503 and new
work is refused with 503, requests already admitted run to completion within
``drain_timeout_s``, then uvicorn shuts down and the process exits 0. A second signal, or
SIGINT, falls through to uvicorn's own handling.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from service.app import build_app
from service.runtime import Runtime
from service.settings import Settings

# After the drain only idle keep-alive connections remain; uvicorn closes those at once.
_SHUTDOWN_GRACE_S = 5


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime):
        super().__init__(config)
        self._runtime = runtime
        self._term_requested = False
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler may interrupt the event loop anywhere, so it only sets a flag;
        # uvicorn's tick (every 0.1 s) starts the drain on the loop.
        if sig == signal.SIGTERM and not self._term_requested and not self.should_exit:
            self._term_requested = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._term_requested and self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        return await super().on_tick(counter)

    async def _drain(self) -> None:
        logging.getLogger("electric.service").info("SIGTERM: draining")
        await self._runtime.drain()
        self.should_exit = True


def run(settings: Settings | None = None) -> None:
    """Serve until SIGTERM or SIGINT; returns normally after a drain (exit status 0)."""
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = Runtime(settings)
    config = uvicorn.Config(
        build_app(runtime), host=settings.host, port=settings.port,
        log_level=settings.log_level, access_log=settings.access_log, lifespan="on",
        timeout_graceful_shutdown=_SHUTDOWN_GRACE_S, server_header=False)
    DrainingServer(config, runtime).run()
