"""Slow, idle and odd clients against the real server on loopback (raw sockets where the HTTP
client would hide what happens): head and first-body-byte timeouts, the connection cap and its
probe slots, API keys checked before a slot is taken, the per-client limit, the 413 lingering
close, and the small protocol rules (HEAD, transfer codings, redirects, %2F, huge integers,
refusals in /metrics, key headers).

Every socket has a timeout, every loop a bound: a server that never cuts a client fails the
test instead of hanging it.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from harness import free_port, metric_value, server_env
from live_server import server_process

from service.server import PROBE_SLOTS

KEY = "conn-test-key"
SERVE_FAKE = """
from harness import FakeEngine
from service.server import run
run(engine=FakeEngine())
"""
SERVE_SLOW = """
from harness import FakeEngine
from service.server import run
run(engine=FakeEngine(delay_s=1.0))
"""
CAP = 8
BODY = b'{"sentences": ["the cat sat"]}'


@pytest.fixture(scope="module")
def strict(fake_artifact: Path) -> Iterator[int]:
    """A server with short head and body-start timeouts, API keys and two POSTs per client."""
    port = free_port()
    env = server_env(fake_artifact, port, ELECTRIC_HEADER_TIMEOUT_S="1",
                     ELECTRIC_BODY_START_TIMEOUT_S="0.5", ELECTRIC_REQUEST_TIMEOUT_S="5",
                     ELECTRIC_API_KEYS=KEY, ELECTRIC_MAX_REQUESTS_PER_PEER="2")
    with server_process(port, env, SERVE_FAKE):
        yield port


@pytest.fixture(scope="module")
def capped(fake_artifact: Path) -> Iterator[int]:
    """A server holding at most CAP connections, with a long head timeout."""
    port = free_port()
    env = server_env(fake_artifact, port, ELECTRIC_MAX_CONNECTIONS=str(CAP),
                     ELECTRIC_HEADER_TIMEOUT_S="30")
    with server_process(port, env, SERVE_FAKE):
        yield port


@pytest.fixture(scope="module")
def slow(fake_artifact: Path) -> Iterator[int]:
    """A server whose engine holds each batch for a second."""
    port = free_port()
    with server_process(port, server_env(fake_artifact, port), SERVE_SLOW):
        yield port


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_all(conn: socket.socket) -> bytes:
    """Everything until the server closes (the socket's timeout bounds the wait)."""
    out = b""
    try:
        while chunk := conn.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection: (status, headers, body) of the answer."""
    with _connect(port) as conn:
        conn.sendall(request)
        return _parse(_read_all(conn))


def _parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), answer[:200]
    headers = {name.lower(): value for name, _, value in
               (line.partition(": ") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _read_answer(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One answer of a keep-alive connection: its head, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    status, headers, body = _parse(data)
    while len(body) < int(headers["content-length"]):
        chunk = conn.recv(65536)
        assert chunk, "closed in the middle of the body"
        body += chunk
    return status, headers, body


def _post(path: str, body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%sContent-Length: %d\r\n\r\n%s"
            % (path.encode(), extra, len(body), body))


AUTH = b"Authorization: Bearer %s\r\n" % KEY.encode()


def _error(body: bytes) -> tuple[str, str]:
    error = json.loads(body)["error"]
    return error["type"], error["message"]


def test_an_idle_connection_is_closed_by_the_head_timeout(strict: int) -> None:
    with _connect(strict) as conn:
        start = time.monotonic()
        assert _read_all(conn) == b"", "nothing came, so nothing is answered"
        print(f"idle socket closed after {time.monotonic() - start:.2f} s")


def test_a_head_sent_one_byte_at_a_time_is_cut_with_408(strict: int) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200
    with _connect(strict) as conn:
        conn.settimeout(0.1)
        answer = b""
        for i in range(len(head)):  # 0.1 s a byte: 20 s to send it all, far past 1 s
            try:
                conn.send(head[i:i + 1])
                answer = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        assert i < len(head) - 1, "the whole head went through"
        conn.settimeout(5)
        status, headers, body = _parse(answer + _read_all(conn))
    assert status == 408 and headers["connection"] == "close"
    kind, message = _error(body)
    assert kind == "request_timeout" and "within 1 s" in message, message


def test_a_post_that_sends_no_body_gets_408_at_the_body_start_timeout(strict: int) -> None:
    with _connect(strict) as conn:
        conn.sendall(b"POST /v1/score HTTP/1.1\r\nHost: t\r\n" + AUTH +
                     b"Content-Length: 100\r\n\r\n")
        status, _, body = _parse(_read_all(conn))
    assert status == 408
    assert _error(body) == ("request_timeout",
                            "no byte of the request body arrived within 0.5 s of its head")


def test_keyless_posts_are_refused_before_their_body_and_take_no_slot(strict: int) -> None:
    """The slot-exhaustion attack without a key: each declares a large body it never sends;
    each gets 401 at once from its headers, and a keyed client is served meanwhile."""
    with ExitStack() as stack:
        attackers = [stack.enter_context(_connect(strict)) for _ in range(20)]
        for conn in attackers:
            conn.sendall(b"POST /v1/score HTTP/1.1\r\nHost: t\r\nContent-Length: 500000\r\n\r\n")
        for conn in attackers:
            status, headers, body = _parse(_read_all(conn))
            assert status == 401 and headers["www-authenticate"] == "Bearer"
        status, _, body = _exchange(strict, _post("/v1/score", extra=AUTH))
        assert status == 200, body


def test_one_client_address_holds_at_most_its_share_of_slots(strict: int) -> None:
    with ExitStack() as stack:
        held = [stack.enter_context(_connect(strict)) for _ in range(2)]
        for conn in held:  # a body begun (so no body-start timeout) and not finished
            conn.sendall(b"POST /v1/score HTTP/1.1\r\nHost: t\r\n" + AUTH +
                         b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY[:5]))
        time.sleep(0.2)  # both admitted: their bodies are being read
        status, headers, body = _exchange(strict, _post("/v1/score", extra=AUTH))
        assert status == 429 and headers["retry-after"] == "1"
        assert "limit per client address is 2" in _error(body)[1]
        for conn in held:
            conn.sendall(BODY[5:])
            assert _parse(_read_all(conn))[0] == 200
    assert _exchange(strict, _post("/v1/score", extra=AUTH))[0] == 200


def test_a_client_sending_a_large_body_before_reading_gets_its_413(strict: int) -> None:
    """urllib writes the whole body, then reads: without a lingering close the server's
    close would reset the connection and the 413 would be lost."""
    for size in (1_100_000, 3_000_000, 6_000_000, 20_000_000, 50_000_000):
        request = urllib.request.Request(
            f"http://127.0.0.1:{strict}/v1/score", data=b"x" * size,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 413, size
        assert f"{size} bytes" in json.loads(refused.value.read())["error"]["message"]


def test_a_body_that_arrives_whole_is_held_to_the_limit_too(fake_artifact: Path) -> None:
    """The server tells the body limit when a body has all arrived (then no timer is armed):
    a chunked body over the limit, sent in one write, is still refused, and one under it in
    two writes is still read to its end."""
    port = free_port()
    env = server_env(fake_artifact, port, ELECTRIC_MAX_BODY_BYTES="2000")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (3000, b" " * 3000)
    with server_process(port, env, SERVE_FAKE):
        status, _, body = _exchange(port, b"POST /v1/score HTTP/1.1\r\nHost: t\r\n"
                                          b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
        assert status == 413 and "the limit is 2000" in _error(body)[1]
        with _connect(port) as conn:
            conn.sendall(_post("/v1/score")[:-10])
            time.sleep(0.2)
            conn.sendall(BODY[-10:])
            status, _, body = _parse(_read_all(conn))
        assert status == 200, body


def test_a_lingering_close_ends_when_the_client_goes_quiet(fake_artifact: Path) -> None:
    """After its 413 the server drops what still comes, and closes once nothing has come for
    linger_idle_s, well before linger_s."""
    port = free_port()
    env = server_env(fake_artifact, port, ELECTRIC_LINGER_IDLE_S="0.5", ELECTRIC_LINGER_S="20")
    with server_process(port, env, SERVE_FAKE), _connect(port) as conn:
        conn.sendall(b"POST /v1/score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000000\r\n\r\n" + b"x" * 100_000)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413")
        conn.sendall(b"x" * 100_000)  # still dropped, not a reset
        while conn.recv(65536):  # the rest of the answer, then the server's close
            pass
        assert time.monotonic() - started < 10


def test_head_answers_like_get_without_a_body(strict: int) -> None:
    status, headers, body = _exchange(strict, b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n"
                                              b"Connection: close\r\n\r\n")
    assert status == 200 and int(headers["content-length"]) > 0 and body == b""
    status, _, body = _exchange(strict, b"HEAD /v1/model HTTP/1.1\r\nHost: t\r\n" + AUTH +
                                b"Connection: close\r\n\r\n")
    assert status == 200 and body == b""
    keyless = _exchange(strict, b"HEAD /v1/model HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert keyless[0] == 401


def test_a_transfer_coding_other_than_chunked_is_refused(strict: int) -> None:
    status, _, body = _exchange(strict, b"POST /v1/score HTTP/1.1\r\nHost: t\r\n" + AUTH +
                                b"Connection: close\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                                b"5\r\nhello\r\n0\r\n\r\n")
    assert status == 400
    kind, message = _error(body)
    assert kind == "bad_request" and "'gzip, chunked'" in message and "only chunked" in message


def test_paths_route_only_as_written(strict: int) -> None:
    status, headers, _ = _exchange(strict, b"GET /v1/model/ HTTP/1.1\r\nHost: evil.example\r\n" +
                                   AUTH + b"Connection: close\r\n\r\n")
    assert status == 404 and "location" not in headers, "no redirect naming the client's Host"
    for path in (b"/v1%2fmodel", b"/v1%2Fmodel"):
        status = _exchange(strict, b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + AUTH +
                           b"Connection: close\r\n\r\n")[0]
        assert status == 404, path
    assert _exchange(strict, b"GET /v1/m%6fdel HTTP/1.1\r\nHost: t\r\n" + AUTH +
                     b"Connection: close\r\n\r\n")[0] == 200, "other escapes still decode"


def test_a_huge_integer_is_a_clean_422(strict: int) -> None:
    body = b'{"sentences": ["a"], "truncate": ' + b"7" * 5000 + b"}"
    status, _, answer = _exchange(strict, _post("/v1/score", body, AUTH))
    assert status == 422
    kind, message = _error(answer)
    assert kind == "invalid_input" and "5000 digits" in message and "4300 digits" in message
    assert "set_int_max_str_digits" not in message


def test_api_key_headers_are_trimmed_and_an_empty_one_hides_nothing(strict: int) -> None:
    for extra in (b"X-API-Key:   %s  \r\n" % KEY.encode(),
                  b"X-API-Key: \r\n" + AUTH,
                  b"Authorization: Bearer   %s \r\n" % KEY.encode()):
        status, _, body = _exchange(strict, _post("/v1/tokenize", extra=extra))
        assert status == 200, (extra, body)
    assert _exchange(strict, _post("/v1/tokenize", extra=b"X-API-Key: \r\n"))[0] == 401


def test_refusals_below_the_app_are_counted(strict: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{strict}", timeout=10) as client:
        before = client.get("/metrics").text
        status, _, body = _exchange(strict, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " +
                                    b"a" * 200_000 + b"\r\n\r\n")
        assert status == 431 and _error(body)[0] == "header_too_large"
        status, _, body = _exchange(strict, b"NOT HTTP AT ALL\r\n\r\n")
        assert status == 400 and _error(body)[0] == "bad_request"
        after = client.get("/metrics").text
    for status_, reason in (("431", "header_too_large"), ("400", "bad_request")):
        grew = (metric_value(after, "electric_requests_total", endpoint="other", status=status_)
                - metric_value(before, "electric_requests_total", endpoint="other",
                               status=status_))
        assert grew == 1, status_
        assert (metric_value(after, "electric_rejections_total", reason=reason)
                - metric_value(before, "electric_rejections_total", reason=reason)) == 1


def test_idle_connections_make_room_for_new_ones(capped: int) -> None:
    with ExitStack() as stack:
        idle = [stack.enter_context(_connect(capped)) for _ in range(CAP + 4)]
        status, _, body = _exchange(capped, _post("/v1/tokenize"))
        assert status == 200, body
        closed = 0
        for conn in idle:
            conn.settimeout(0.5)
            try:
                closed += conn.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= 5, f"only {closed} of the oldest idle connections were closed"


def test_past_the_cap_probes_are_answered_and_the_rest_get_503(capped: int) -> None:
    """CAP connections each in the middle of a head (not idle, so nothing to close for
    room): a probe is still answered, a POST gets 503 with Retry-After, not a hang."""
    with ExitStack() as stack:
        busy = [stack.enter_context(_connect(capped)) for _ in range(CAP)]
        for conn in busy:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        time.sleep(0.2)  # every head begun: none of them is idle
        refused = []
        for _ in range(10):  # a leftover idle connection of an earlier test may make room once
            status, headers, body = _exchange(capped, _post("/v1/tokenize"))
            if status != 200:
                refused.append((status, headers, body))
                break
        assert refused, "never refused past the cap"
        status, headers, body = refused[0]
        assert status == 503 and headers["retry-after"] == "1"
        assert _error(body)[0] == "too_many_connections"
        for probe in (b"/healthz", b"/readyz"):
            answer = _exchange(capped, b"GET " + probe + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            assert answer[0] == 200 and answer[1]["connection"] == "close", probe
        # The probe slots full too: a connection past them is closed unanswered.
        spare = [stack.enter_context(_connect(capped)) for _ in range(PROBE_SLOTS)]
        for conn in spare:
            conn.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.2)
        with _connect(capped) as late:
            assert _read_all(late) == b""
        for conn in busy:  # the heads complete: each is answered on its own connection
            conn.sendall(b"Connection: close\r\n\r\n")
            assert _parse(_read_all(conn))[0] == 200
    for _ in range(50):  # the spare slots time out (2 s) and everything is served again
        if _exchange(capped, _post("/v1/tokenize"))[0] == 200:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("never served again after the load went")


def test_an_interim_100_continue_then_answers_on_one_connection(strict: int) -> None:
    """The interim answer goes out before the body is sent; then each answer, head and body,
    arrives whole on the kept-alive connection."""
    head = (b"POST /v1/score HTTP/1.1\r\nHost: t\r\n" + AUTH +
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BODY))
    with _connect(strict) as conn:
        conn.sendall(head)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            chunk = conn.recv(1)
            assert chunk, "closed before the interim answer"
            interim += chunk
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(BODY)
        status, headers, body = _read_answer(conn)
        assert status == 200 and json.loads(body)["results"][0]["num_tokens"] == 3
        assert "x-request-id" in headers
        for _ in range(3):
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = _read_answer(conn)
            assert status == 200 and json.loads(body) == {"status": "ok"}


def test_a_client_that_hangs_up_on_the_real_server_has_its_work_dropped(slow: int) -> None:
    """The server itself tells the handler (no ``receive`` watcher): a request queued behind
    a running batch, whose client closes its socket, is answered 499 in the metrics and its
    sentences never reach the engine."""
    url = f"http://127.0.0.1:{slow}"
    with httpx.Client(base_url=url, timeout=10) as client:
        before = client.get("/metrics").text
        with _connect(slow) as first:
            first.sendall(_post("/v1/score"))  # runs for a second
            time.sleep(0.3)
            with _connect(slow) as leaving:
                body = b'{"sentences": ["a dog", "a bird"]}'
                leaving.sendall(_post("/v1/score", body))
                time.sleep(0.3)  # queued behind the first batch
            status, _, _ = _parse(_read_all(first))
            assert status == 200
        after = client.get("/metrics").text

        def grew(name: str, **labels: str) -> float:
            return metric_value(after, name, **labels) - metric_value(before, name, **labels)

        assert grew("electric_rejections_total", reason="client_gone") == 1
        assert grew("electric_requests_total", endpoint="/v1/score", status="499") == 1
        assert grew("electric_tokens_scored_total") == 3, "only the first request was scored"
