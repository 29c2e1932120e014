"""Run the app under uvicorn: one process, one model (replicas scale out, not workers).

SIGTERM (Kubernetes stopping the pod) drains instead of cutting: /readyz turns 503 and new
work is refused with 503, requests already admitted run to completion within
``drain_timeout_s``, then uvicorn shuts down and the process exits 0. A second signal, or
SIGINT, falls through to uvicorn's own handling. A start-up failure (a missing or corrupt
artifact) exits with status 3. Request heads are bounded here (431), bodies in
service/middleware.py (413, 408).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.app import build_app
from service.engine import EnergyEngine
from service.errors import error_body
from service.runtime import Runtime
from service.settings import Settings

# After the drain only idle keep-alive connections remain; uvicorn closes those at once.
_SHUTDOWN_GRACE_S = 5
# Largest request line plus headers; larger gets 431. Browsers and proxies stay under 16-32 KiB.
MAX_HEAD_BYTES = 64 * 1024
_LINGER_S = 2.0


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a limit on the request head.

    httptools buffers a request line and headers of any size until they end (100 MB of
    headers held 96 MiB of memory when tried), and uvicorn offers no limit for it (h11 has
    one, but parses several times slower). Bytes arriving while a head is incomplete are
    counted here, so one connection can make the server hold at most MAX_HEAD_BYTES plus one
    read of head.
    """

    _head_bytes = -1  # bytes of the current head after its first read; -1 outside a head
    _refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused head: read and dropped, never buffered
        if self._head_bytes >= 0:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()
                return
        super().data_received(data)

    def _refuse_head(self) -> None:
        body = json.dumps(error_body("header_too_large", f"the request line and headers pass "
                                     f"{MAX_HEAD_BYTES} bytes")).encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                             b"content-type: application/json\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
        # A lingering close: closing with the client's bytes unread would reset the
        # connection and could destroy the answer before the client reads it. So send FIN,
        # drop what still comes, and close once the client does (or after a grace period).
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self.transport.close)


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


def _log_access_as_json_lines() -> None:
    """Access lines are JSON already: print them bare, one per line, for a log shipper."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("electric.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


def run(settings: Settings | None = None, *, engine: EnergyEngine | None = None) -> None:
    """Serve until SIGTERM or SIGINT; returns normally after a drain (exit status 0). A
    start-up failure (a missing or corrupt artifact) exits with status 3, uvicorn's.
    ``engine`` replaces the artifact's ONNX model (process-level tests)."""
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.access_log:
        _log_access_as_json_lines()
    runtime = Runtime(settings, engine)
    config = uvicorn.Config(
        build_app(runtime), host=settings.host, port=settings.port,
        # uvicorn's own access log is off: it has no JSON form; ours (service/middleware.py) does.
        log_level=settings.log_level, access_log=False, lifespan="on", http=BoundedHeadProtocol,
        timeout_graceful_shutdown=_SHUTDOWN_GRACE_S, server_header=False)
    DrainingServer(config, runtime).run()
