"""The server's per-request transport: a response's head leaves with its first body bytes (one
write for a one-message answer), and never later than the end of its response, its close or
a write the protocol makes itself; an interim 100 Continue is never held."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from dataclasses import dataclass, field

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from service.server import _ResponseTransport


@dataclass
class _Socket:
    writes: list[bytes] = field(default_factory=list)

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


@dataclass
class _Protocol:
    transport: _Socket = field(default_factory=_Socket)
    holding: _ResponseTransport | None = None
    events: list[str] = field(default_factory=list)

    def on_response_complete(self) -> None:
        self.events.append(f"complete after {len(self.transport.writes)} writes")

    def close_after_response(self) -> None:
        self.events.append(f"close after {len(self.transport.writes)} writes")


@dataclass
class _Cycle:
    response_started: bool = False


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def _pair() -> tuple[_Protocol, _Cycle, _ResponseTransport]:
    protocol, cycle = _Protocol(), _Cycle()
    return protocol, cycle, _ResponseTransport(protocol, cycle)  # type: ignore[arg-type]


def test_a_head_and_its_body_leave_in_one_write() -> None:
    protocol, cycle, transport = _pair()
    cycle.response_started = True
    transport.write(HEAD)
    assert protocol.transport.writes == [] and protocol.holding is transport
    transport.write(b"{}")
    transport.response_complete()
    assert protocol.transport.writes == [HEAD + b"{}"]
    assert protocol.holding is None and protocol.events == ["complete after 1 writes"]


def test_an_interim_100_continue_is_written_at_once() -> None:
    protocol, cycle, transport = _pair()
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response starts
    assert protocol.transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    cycle.response_started = True
    transport.write(HEAD)
    transport.write(b"{}")
    assert protocol.transport.writes[1:] == [HEAD + b"{}"]


def test_a_head_without_a_body_leaves_when_the_response_ends() -> None:
    protocol, cycle, transport = _pair()  # HEAD, 204, 304: the cycle writes no body
    cycle.response_started = True
    transport.write(HEAD)
    transport.response_complete()
    assert protocol.transport.writes == [HEAD]
    assert protocol.events == ["complete after 1 writes"]  # written before the protocol moves on


def test_a_close_writes_the_held_head_first() -> None:
    protocol, cycle, transport = _pair()
    cycle.response_started = True
    transport.write(HEAD)
    transport.close()
    assert protocol.transport.writes == [HEAD] and protocol.events == ["close after 1 writes"]


def test_a_large_body_follows_its_head_in_a_second_write() -> None:
    protocol, cycle, transport = _pair()
    cycle.response_started = True
    body = b"x" * 200_000
    transport.write(HEAD)
    transport.write(body)
    assert protocol.transport.writes == [HEAD, body]


def test_a_streamed_body_holds_only_the_head() -> None:
    protocol, cycle, transport = _pair()
    cycle.response_started = True
    transport.write(HEAD)
    transport.write(b"a")
    transport.write(b"b")
    transport.flush()  # nothing held any more: a no-op
    assert protocol.transport.writes == [HEAD + b"a", b"b"]


def test_a_cycle_and_its_transport_are_freed_without_the_garbage_collector() -> None:
    """A reference cycle per request would leave the collector work whose full passes stall
    the event loop; reference counting alone must free a finished request."""
    protocol = _Protocol()
    socket_ = protocol.transport
    gc.disable()
    try:
        cycle = RequestResponseCycle(
            scope={"type": "http", "method": "POST"}, transport=socket_,  # type: ignore[arg-type]
            flow=FlowControl(socket_), logger=logging.getLogger("test"),  # type: ignore[arg-type]
            access_logger=logging.getLogger("test"), access_log=False, default_headers=[],
            message_event=asyncio.Event(), expect_100_continue=False, keep_alive=True,
            on_response=lambda: None)
        transport = _ResponseTransport(protocol, cycle)  # type: ignore[arg-type]
        cycle.transport = transport
        cycle.on_response = transport.response_complete
        cycle.response_started = True
        transport.write(HEAD)
        transport.write(b"{}")
        transport.response_complete()
        gone = weakref.ref(cycle), weakref.ref(transport)
        del cycle, transport
        assert [ref() for ref in gone] == [None, None]
    finally:
        gc.enable()
    assert socket_.writes == [HEAD + b"{}"]
