"""trusted_proxies: the real client behind a proxy, and a spoofed header that changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from harness import FakeEngine, serving
from pydantic import ValidationError

from service.model_host import ModelHost
from service.proxies import forwarded_hops, parse_networks, real_client
from service.settings import Settings

MakeSettings = Callable[..., Settings]
PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(("peer", "hops", "want"), [
    ("10.0.0.5", ["203.0.113.9"], "203.0.113.9"),                 # one proxy
    ("10.0.0.5", ["203.0.113.9", "10.1.2.3"], "203.0.113.9"),     # two proxies, both trusted
    ("10.0.0.5", ["198.51.100.1", "203.0.113.9"], "203.0.113.9"),  # the left one is the client's claim
    ("192.0.2.50", ["203.0.113.9"], "192.0.2.50"),                # not a proxy: header ignored
    ("10.0.0.5", None, "10.0.0.5"),                               # no header
    ("10.0.0.5", ["unknown"], "10.0.0.5"),                        # nothing to believe
    ("10.0.0.5", ["10.0.0.7"], "10.0.0.5"),                       # only proxies recorded
    ("fd00::1", ["[2001:db8::7]:4711"], "2001:db8::7"),
    ("10.0.0.5", ["203.0.113.9:5555"], "203.0.113.9"),
])
def test_the_client_is_the_nearest_untrusted_hop(peer: str, hops: list[str] | None,
                                                 want: str) -> None:
    assert real_client(peer, hops, PROXIES) == want


def test_forwarded_is_read_before_x_forwarded_for() -> None:
    headers = [(b"x-forwarded-for", b"198.51.100.1"),
               (b"forwarded", b'for=192.0.2.43;proto=https, for="[2001:db8::1]:80"')]
    assert forwarded_hops(headers) == ["192.0.2.43", '"[2001:db8::1]:80"']
    assert forwarded_hops(headers[:1]) == ["198.51.100.1"]
    assert forwarded_hops([(b"x-forwarded-for", b"1.2.3.4, 5.6.7.8"),
                           (b"x-forwarded-for", b"9.9.9.9")]) == ["1.2.3.4", " 5.6.7.8",
                                                                  "9.9.9.9"]
    assert forwarded_hops([]) is None


def test_a_setting_that_is_not_a_network_is_refused(fake_settings: MakeSettings) -> None:
    with pytest.raises(ValidationError, match="'ingress' is not an IP address or a CIDR"):
        fake_settings(trusted_proxies="10.0.0.0/8,ingress")
    assert fake_settings(trusted_proxies="10.0.0.0/8, 127.0.0.1").trusted_proxies == [
        "10.0.0.0/8", "127.0.0.1"]


async def _two_at_once(client: httpx.AsyncClient, engine: FakeEngine,
                       first: str, second: str) -> list[int]:
    """Statuses of two scores sent while the engine is held, as from ``first`` then
    ``second`` (X-Forwarded-For)."""
    held = asyncio.ensure_future(client.post("/v1/score", json={"sentences": ["a b"]},
                                             headers={"X-Forwarded-For": first}))
    await asyncio.to_thread(engine.entered.wait, 5)
    other = asyncio.ensure_future(client.post("/v1/score", json={"sentences": ["a b"]},
                                              headers={"X-Forwarded-For": second}))
    await asyncio.wait([other], timeout=0.5)  # a refusal comes at once; an admission waits
    engine.gate.set()
    return [(await held).status_code, (await other).status_code]


@pytest.mark.parametrize(("trusted", "want"), [
    ("127.0.0.0/8", [200, 200]),  # the test client's address is the proxy: two clients
    ("10.0.0.0/8", [200, 429]),   # it is not: one client, whatever its header says
    ("", [200, 429]),             # none trusted: the header is never read
])
def test_the_per_client_limit_sees_the_client_behind_a_trusted_proxy(
        fake_settings: MakeSettings, trusted: str, want: list[int]) -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        settings = fake_settings(max_requests_per_peer=1, trusted_proxies=trusted)
        async with serving(ModelHost(settings, engine)) as client:
            assert await _two_at_once(client, engine, "203.0.113.9", "198.51.100.1") == want

    asyncio.run(scenario())
