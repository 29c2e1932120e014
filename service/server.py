"""Run the app under uvicorn: one process, one model (replicas scale out, not workers).

SIGTERM (Kubernetes stopping the pod) drains instead of cutting: /readyz turns 503 and new
work is refused with 503, requests already admitted run to completion within
``drain_timeout_s``, then uvicorn shuts down and the process exits 0. A second signal, or
SIGINT, falls through to uvicorn's own handling. A start-up failure (a missing or corrupt
artifact) exits with status 3.

Connections are bounded here, below the app: request heads in size (431) and in time (408
from connect, where uvicorn's keep-alive timeout only runs between requests), open
connections in number (idle ones make room, then 503 except for the probes). Every refusal
made with the client's bytes unread closes lingeringly. Bodies are bounded in
service/middleware.py (413, 408).
"""

from __future__ import annotations

import asyncio
import gc
import http
import json
import logging
import re
import resource
import signal
import socket
import urllib.parse
import weakref
from types import FrameType
from typing import cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.app import build_app
from service.disconnect import EXTENSION, ClientWatch
from service.engine import EnergyEngine
from service.errors import (
    BadRequest,
    HeaderTooLarge,
    HeadTimeout,
    ServiceError,
    TooManyConnections,
    error_body,
    status_of,
)
from service.metrics import Metrics
from service.middleware import BODY_BUFFERED, ENDPOINTS
from service.model_host import ModelHost
from service.settings import Settings

# After the drain only idle keep-alive connections remain; uvicorn closes those at once.
_SHUTDOWN_GRACE_S = 5
# Largest request line plus headers; larger gets 431. Browsers and proxies stay under 16-32 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Connections past max_connections that may still ask a probe; past these, closed at accept.
PROBE_SLOTS = 32
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_PROBE_HEAD_S = 2.0  # a probe sends its head at once; a spare slot is not held longer
_ENCODED_SLASH = re.compile("%2f", re.IGNORECASE)
# Descriptors kept for the process itself (model and log files, epoll, pipes) and the probe
# slots, out of ``ulimit -n``; and the most connections by default, whatever the limit.
_FD_RESERVE = 128 + PROBE_SLOTS
_MAX_DEFAULT_CONNECTIONS = 8192
# A body up to this size is copied behind its held head and written with it; a larger one is
# written after it (a copy of it would cost more than the second write).
_JOINED_BODY_BYTES = 64 * 1024


def default_max_connections() -> int:
    """Connections the open-file limit leaves room for, so accept() never fails (EMFILE)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _MAX_DEFAULT_CONNECTIONS
    return max(1, min(soft - _FD_RESERVE, _MAX_DEFAULT_CONNECTIONS))


class Connections:
    """What the connections of one server share: their limits, the metrics they count
    refusals in, and which of them are idle (nothing received since connect or since their
    last answer), oldest first, so that a new connection can take an idle one's place."""

    def __init__(self, max_connections: int, header_timeout_s: float, metrics: Metrics | None,
                 linger_s: float = 30.0, linger_idle_s: float = 5.0):
        self.max_connections, self.header_timeout_s = max_connections, header_timeout_s
        self.linger_s, self.linger_idle_s = linger_s, linger_idle_s
        self.metrics = metrics
        self.idle: dict[BoundedHeadProtocol, None] = {}  # insertion order: idle the longest

    def make_room(self) -> bool:
        """Close the connection idle the longest; False when none is idle."""
        if not self.idle:
            return False
        oldest = next(iter(self.idle))
        del self.idle[oldest]
        oldest.transport.close()
        return True

    def count(self, status: int, reason: str, path: str | None = None) -> None:
        """A refusal made below the app, in the series RequestMetrics keeps for the app's."""
        if self.metrics is not None:
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.reject(reason)


class _ResponseTransport(asyncio.Transport):
    """The transport one request's cycle writes its response to.

    - The response head is held until the first bytes of the body and leaves with them, so
      that an answer of one body message is one write (one system call, one segment) instead
      of two (docs/PERFORMANCE.md). A head is never held past the end of its response (HEAD,
      204 and 304 answers have no body), its close, or a write the protocol makes itself.
    - Its close (after a ``Connection: close`` answer) lingers when the request body has not
      all arrived.
    - ``watch`` tells the request's handler when the connection is lost
      (service/disconnect.py), without a task per request waiting on ``receive``.
    - ``body_buffered`` tells the body limit when the whole body has arrived, so that it reads
      the body without arming its timeouts (service/middleware.py ``BodyLimit``).
    """

    def __init__(self, protocol: BoundedHeadProtocol, cycle: RequestResponseCycle):
        super().__init__()
        # Weakly: the cycle holds this transport, and a reference cycle per request would be
        # left for the garbage collector, whose full passes stall the loop for milliseconds.
        self._protocol, self._cycle = protocol, weakref.ref(cycle)
        self._head: bytes | None = None
        self._head_written = False
        self.watch = ClientWatch()

    def body_buffered(self) -> bool:
        """The request's body has all arrived and nobody has read it yet: ``receive`` returns
        it without waiting."""
        cycle = self._cycle()
        return (cycle is not None and not cycle.more_body and not cycle.disconnected
                and cycle.message_event.is_set())

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._head_written and self._started():
            # The cycle writes the head first once the response has started (an interim
            # "100 Continue" is written before that and goes out at once).
            self._head_written = True
            self._head = bytes(data)
            self._protocol.holding = self
            return
        head = self._head
        if head is not None:
            self._release()
            if len(data) <= _JOINED_BODY_BYTES:
                data = head + data
            else:
                self._protocol.transport.write(head)
        self._protocol.transport.write(data)

    def _started(self) -> bool:
        cycle = self._cycle()
        return cycle is not None and cycle.response_started

    def flush(self) -> None:
        """Write a held head now."""
        head = self._head
        if head is not None:
            self._release()
            self._protocol.transport.write(head)

    def _release(self) -> None:
        self._head = None
        if self._protocol.holding is self:
            self._protocol.holding = None

    def response_complete(self) -> None:
        """The cycle's end-of-response callback: the head goes out if no body took it."""
        self.flush()
        self._protocol.on_response_complete()

    def is_closing(self) -> bool:
        return self._protocol.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._protocol.close_after_response()


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on connections and request heads.

    httptools buffers a request line and headers of any size until they end (100 MB of
    headers held 96 MiB of memory when tried), and uvicorn offers no limit for it (h11 has
    one, but parses several times slower). Bytes arriving while a head is incomplete are
    counted here, so one connection can make the server hold at most MAX_HEAD_BYTES plus one
    read of head. A head must also be complete within ``header_timeout_s``. ``shared`` is set
    per server by :func:`protocol_for`.
    """

    shared: Connections  # set by protocol_for
    _head_bytes = -1  # bytes of the current head after its first read; -1 outside a head
    _lingering = False  # answered and closing: what still comes is dropped, never parsed
    _last_read = 0.0  # loop time of the last bytes dropped while lingering
    _over_cap = False  # past max_connections: one probe request, nothing else
    _head_timer: asyncio.TimerHandle | None = None
    _head_timeout_s = 0.0
    holding: _ResponseTransport | None = None  # the response whose head is not yet written

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        open_ = len(self.connections)
        if open_ > self.shared.max_connections and not self.shared.make_room():
            if open_ > self.shared.max_connections + PROBE_SLOTS:
                transport.close()  # nothing read, nothing to answer
                return
            self._over_cap = True
        self._wait_for_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.idle.pop(self, None)
        self._cancel_head_timer()
        self.holding = None  # nowhere to write it now
        super().connection_lost(exc)
        cycle = self.cycle
        if (cycle is not None and cycle.disconnected
                and isinstance(cycle.transport, _ResponseTransport)):
            cycle.transport.watch.lost()

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # dropped; the client has sent something, so it is not idle
            self._last_read = self.loop.time()
            return
        self.shared.idle.pop(self, None)
        if self._head_bytes >= 0:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.refuse(HeaderTooLarge(f"the request line and headers pass "
                                           f"{MAX_HEAD_BYTES} bytes, the limit"))
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        if self._lingering:
            return
        super().on_message_begin()
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        if self._lingering:
            return
        self._head_bytes = -1
        self._cancel_head_timer()
        if self._over_cap and not self._asks_probe():
            self.refuse(TooManyConnections(
                f"the server holds {self.shared.max_connections} connections, its limit; "
                f"only {', '.join(sorted(PROBE_PATHS))} are answered past it"))
            return
        super().on_headers_complete()
        raw_path = self.scope.get("raw_path", b"")
        if b"%2f" in raw_path.lower():
            # uvicorn decodes %2F into "/", which would route /v1%2Fscore to /v1/score: keep
            # it encoded, so that a path matches only as the client wrote it.
            self.scope["path"] = "%2F".join(urllib.parse.unquote(part) for part in
                                            _ENCODED_SLASH.split(raw_path.decode("ascii")))
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # this request's cycle
            cycle.transport = transport = _ResponseTransport(self, cycle)
            cycle.on_response = transport.response_complete
            extensions = cast("dict[str, object]", self.scope.setdefault("extensions", {}))
            extensions[EXTENSION] = transport.watch
            extensions[BODY_BUFFERED] = transport.body_buffered
            if self._over_cap:
                cycle.keep_alive = False  # the spare slot is for this one probe only

    def on_body(self, body: bytes) -> None:
        if not self._lingering:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._lingering:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._wait_for_head()

    def send_400_response(self, msg: str) -> None:
        self.refuse(BadRequest("the request is not valid HTTP/1.1"))

    def _asks_probe(self) -> bool:
        return (self.parser.get_method() in (b"GET", b"HEAD")
                and httptools.parse_url(self.url).path.decode("ascii", "replace") in PROBE_PATHS)

    def _wait_for_head(self) -> None:
        """Idle until the next head begins, which must then end within the head timeout."""
        self.shared.idle[self] = None
        self._head_timeout_s = self.shared.header_timeout_s
        if self._over_cap:
            self._head_timeout_s = min(self._head_timeout_s, _PROBE_HEAD_S)
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._lingering:
            return
        if self._head_bytes < 0:  # nothing came: no request to answer
            self.shared.idle.pop(self, None)
            self.transport.close()
            return
        self.refuse(HeadTimeout(f"the request head did not arrive within "
                                f"{self._head_timeout_s:g} s ({self._head_bytes} bytes came)"))

    def refuse(self, exc: ServiceError) -> None:
        """Answer below the app (no request reached it), count it, and close lingeringly."""
        if self.holding is not None:
            self.holding.flush()
        status = status_of(exc)
        body = json.dumps(error_body(exc.type, exc.message)).encode()
        head = [b"HTTP/1.1 %d %s" % (status, http.HTTPStatus(status).phrase.encode()),
                b"content-type: application/json", b"connection: close",
                *(f"{k.lower()}: {v}".encode() for k, v in (exc.headers() or {}).items()),
                b"content-length: %d" % len(body)]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        path = None
        if isinstance(exc, TooManyConnections):  # the one refused with its head known
            path = httptools.parse_url(self.url).path.decode("ascii", "replace")
        self.shared.count(status, exc.type, path)
        self._linger()

    def close_after_response(self) -> None:
        """Close after an answer; lingeringly if the request body is still coming."""
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        # A lingering close: closing with the client's bytes unread would reset the
        # connection and could destroy the answer before the client reads it. So send FIN,
        # drop what still comes, and close once the client does (eof_received returns None,
        # so asyncio closes the transport), after linger_s in all, or after linger_idle_s
        # with nothing received: bounded by time as nginx bounds it, never by bytes, since
        # nothing dropped is kept.
        self._lingering = True
        self.shared.idle.pop(self, None)
        self._cancel_head_timer()
        self.flow.resume_reading()  # paused when a body passed uvicorn's high-water mark
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(self.shared.linger_s, self.transport.close)
        self._last_read = self.loop.time()
        self.loop.call_later(self.shared.linger_idle_s, self._close_if_quiet)

    def _close_if_quiet(self) -> None:
        """End the lingering close once the client has sent nothing for ``linger_idle_s``;
        one timer per connection, moved on rather than made anew for every read."""
        if self.transport.is_closing():
            return
        quiet_until = self._last_read + self.shared.linger_idle_s
        if self.loop.time() >= quiet_until:
            self.transport.close()
        else:
            self.loop.call_at(quiet_until, self._close_if_quiet)


def protocol_for(shared: Connections) -> type[BoundedHeadProtocol]:
    """The protocol class of one server, its connections sharing ``shared``."""

    class ServerProtocol(BoundedHeadProtocol):
        pass

    ServerProtocol.shared = shared
    return ServerProtocol


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, host: ModelHost):
        super().__init__(config)
        self._host = host
        self._term_requested = False
        self._drain_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What start-up loaded (the app, the artifact, the tokenizer) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it. Under
        # one-sentence requests those walks took tens of ms each (docs/PERFORMANCE.md).
        gc.collect()
        gc.freeze()

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
        await self._host.drain()
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
    host = ModelHost(settings, engine)
    connections = Connections(settings.max_connections or default_max_connections(),
                              settings.header_timeout_s, host.metrics, settings.linger_s,
                              settings.linger_idle_s)
    config = uvicorn.Config(
        build_app(host), host=settings.host, port=settings.port,
        # uvicorn's own access log is off: it has no JSON form; ours (service/middleware.py) does.
        log_level=settings.log_level, access_log=False, lifespan="on",
        http=protocol_for(connections),
        timeout_graceful_shutdown=_SHUTDOWN_GRACE_S, server_header=False,
        # The client's address comes from trusted_proxies alone (service/proxies.py), never
        # from uvicorn's default trust of X-Forwarded-For sent over loopback.
        proxy_headers=False)
    DrainingServer(config, host).run()
