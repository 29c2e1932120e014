"""The real client behind trusted proxies: ``X-Forwarded-For`` and ``Forwarded`` (RFC 7239).

Behind a Kubernetes Ingress or any load balancer, every connection comes from a proxy, so the
per-client limit (``max_requests_per_peer``) and the access log would see one client. With
``trusted_proxies`` set (addresses or CIDR networks), a request whose connection comes from one
of them gets ``scope["client"]`` rewritten to the address the proxies recorded: the hops are
read from the right (the nearest proxy appends last), trusted ones skipped, and the first
untrusted address is the client. Anything to its left was written by the client itself and is
never believed. A request from any other address keeps its own: a header it sends changes
nothing. ``Forwarded`` is read when present, else ``X-Forwarded-For``; with neither, or with
values that are not addresses, the connection's peer stays the client.

uvicorn's own proxy-header handling is switched off (service/server.py): this layer is the one
place that decides, for every layer after it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the ASGI types only: settings imports this module without an HTTP stack
    from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# One element's for= parameter: for=192.0.2.60, for="[2001:db8::1]:4711", for=unknown.
_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)', re.IGNORECASE)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR networks; raises ValueError naming a value that is neither."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or a CIDR network "
                             "(e.g. 10.0.0.0/8, 192.0.2.7, fd00::/8)") from None
    return tuple(out)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address in one hop's text (quotes, [v6]:port, v4:port allowed), else None."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # v4 with a port; bare v6 has several colons
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def forwarded_hops(headers: Sequence[tuple[bytes, bytes]]) -> list[str] | None:
    """The recorded hops, nearest last: from every ``Forwarded`` header when there is one,
    else from every ``X-Forwarded-For``; None when neither is present."""
    forwarded = [v.decode("latin-1") for k, v in headers if k == b"forwarded"]
    if forwarded:
        hops = []
        for element in ",".join(forwarded).split(","):
            match = _FOR.search(element)
            hops.append(match.group(1) if match else "")
        return hops
    xff = [v.decode("latin-1") for k, v in headers if k == b"x-forwarded-for"]
    if xff:
        return [hop for value in xff for hop in value.split(",")]
    return None


def real_client(peer: str, hops: list[str] | None, trusted: tuple[Network, ...]) -> str:
    """The client address: ``peer`` unless it is a trusted proxy that recorded ``hops``."""
    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in trusted)

    own = _address(peer)
    if hops is None or own is None or not is_trusted(own):
        return peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return peer  # "unknown" or garbage: nothing further left can be believed
        if not is_trusted(address):
            return str(address)
    return peer  # every hop was a trusted proxy


class TrustedProxies:
    """Rewrite ``scope["client"]`` to the real client for requests from trusted proxies."""

    def __init__(self, app: ASGIApp, trusted: tuple[Network, ...]):
        self.app, self.trusted = app, trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client:
            address = real_client(client[0], forwarded_hops(scope["headers"]), self.trusted)
            if address != client[0]:
                scope["client"] = (address, 0)
        await self.app(scope, receive, send)
