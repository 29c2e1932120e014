"""A small Python client for the scoring service: /v1/score, /v1/rerank, /v1/model.

``ElectricClient`` (sync) and ``AsyncElectricClient`` (asyncio) share everything but the
waiting. Results are the service's own response models (service/schemas.py), so a field added
to the API shows up here typed. Refusals raise :class:`ElectricError` with the service's error
type and message.

Retries: 429 (queue full) and 503 (loading, warming up or draining) are worth another try, and
so is a connection that failed or dropped (a replica restarting). The wait is the server's
``Retry-After`` when it sends one (seconds or an HTTP date), else an exponential backoff with
jitter so that a crowd of clients does not return in step. Scoring is idempotent, so repeating
a request is safe. Other statuses (422 invalid input, 413 too large, 504 deadline) are the
caller's to handle and are raised at once.

    with ElectricClient("http://localhost:8000") as client:
        print(client.score(["the cat sat on the mat"]).results[0].score)
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel
from typing_extensions import Self

from service.schemas import (
    Hypothesis,
    HypothesisList,
    ModelInfo,
    RerankResponse,
    ScoreResponse,
)

M = TypeVar("M", bound=BaseModel)
HypothesisLike = str | Hypothesis | tuple[str, float]
"""A hypothesis as the client takes it: text, or text with the system's own score."""

# Errors where the request may not have reached the service, or its answer was cut off.
_RETRY_TRANSPORT = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    """Tries in all, the first included; 1 turns retries off."""
    backoff_s: float = 0.5
    """Wait before the second try when the server gives no Retry-After; doubles each time."""
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 300.0
    """A Retry-After longer than this is not waited for: the error is raised instead."""
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` from 0); None: give up."""
        if attempt + 1 >= self.attempts:
            return None
        if response is not None:
            after = retry_after_s(response)
            if after is not None:
                return after if after <= self.max_retry_after_s else None
        # Full jitter on the upper half: spreads clients out, never waits less than half.
        cap = min(self.max_backoff_s, self.backoff_s * 2.0 ** attempt)
        return float(cap * random.uniform(0.5, 1.0))

    def next_step(self, attempt: int,
                  outcome: httpx.Response | Exception) -> httpx.Response | float:
        """After try ``attempt`` (from 0): the response to hand back, or seconds to wait
        before trying again.

        ``outcome`` is the try's response, or the transport error it ended in. Once retries
        are spent the error is raised: a refusal as :class:`ElectricError`, a transport error
        as itself. Both clients' loops call this and do only the sending and the waiting.
        """
        if isinstance(outcome, httpx.Response):
            if outcome.status_code not in self.statuses:
                return outcome
            wait = self.delay(attempt, outcome)
            if wait is None:
                raise ElectricError.from_response(outcome)
            return wait
        wait = self.delay(attempt, None)
        if wait is None:
            raise outcome
        return wait


def retry_after_s(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (delta-seconds or HTTP date); None if absent/bad."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class ElectricError(Exception):
    """The service refused a request (or kept refusing it through every retry)."""

    def __init__(self, status: int, type: str, message: str):
        super().__init__(f"{status} {type}: {message}")
        self.status, self.type, self.message = status, type, message

    @classmethod
    def from_response(cls, response: httpx.Response) -> ElectricError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error["type"]), str(error["message"]))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, "http_error", response.text[:200] or
                       response.reason_phrase)


def _hypothesis(h: HypothesisLike) -> str | dict[str, Any]:
    if isinstance(h, str):
        return h
    if isinstance(h, Hypothesis):  # one made without a score has none, as the service reads it
        return h.model_dump(include={"text"} | ({"score"} & h.model_fields_set))
    text, score = h
    return {"text": text, "score": score}


def _rerank_body(lm_weight: float | None, length_bonus: float | None, truncate: bool,
                 rank_prior: str | None, **form: Any) -> dict[str, Any]:
    """What is not given stays out of the body: the service's manifest decides it."""
    body: dict[str, Any] = {**form, "truncate": truncate}
    given = {"lm_weight": lm_weight, "length_bonus": length_bonus, "rank_prior": rank_prior}
    return {**body, **{k: v for k, v in given.items() if v is not None}}


def _list_body(lst: HypothesisList | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(lst, HypothesisList):
        return {"id": lst.id, "hypotheses": [_hypothesis(h) for h in lst.hypotheses]}
    return {"id": lst.get("id"), "hypotheses": [_hypothesis(h) for h in lst["hypotheses"]]}


class _Common:
    def __init__(self, base_url: str, api_key: str | None, timeout_s: float,
                 retry: RetryPolicy | None):
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @staticmethod
    def _parse(response: httpx.Response, model: type[M]) -> M:
        if response.status_code != 200:
            raise ElectricError.from_response(response)
        return model.model_validate(response.json())


class ElectricClient(_Common):
    """Blocking client; one connection pool, reuse it (and close it, or use ``with``)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, api_key, timeout_s, retry)
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout,
                                  headers=self.headers, transport=transport)

    def score(self, sentences: Sequence[str], truncate: bool = False) -> ScoreResponse:
        body = {"sentences": list(sentences), "truncate": truncate}
        return self._parse(self._send("POST", "/v1/score", body), ScoreResponse)

    def rerank(self, hypotheses: Sequence[HypothesisLike], *, lm_weight: float | None = None,
               length_bonus: float | None = None, truncate: bool = False,
               rank_prior: str | None = None) -> RerankResponse:
        """One n-best list; the answer's ``hypotheses`` holds it sorted, best first."""
        body = _rerank_body(lm_weight, length_bonus, truncate, rank_prior,
                            hypotheses=[_hypothesis(h) for h in hypotheses])
        return self._parse(self._send("POST", "/v1/rerank", body), RerankResponse)

    def rerank_lists(self, lists: Sequence[HypothesisList | Mapping[str, Any]], *,
                     lm_weight: float | None = None, length_bonus: float | None = None,
                     truncate: bool = False, rank_prior: str | None = None) -> RerankResponse:
        """Several lists (``{"id", "hypotheses"}``) in one request; the answer's ``lists``."""
        body = _rerank_body(lm_weight, length_bonus, truncate, rank_prior,
                            lists=[_list_body(lst) for lst in lists])
        return self._parse(self._send("POST", "/v1/rerank", body), RerankResponse)

    def model(self) -> ModelInfo:
        return self._parse(self._send("GET", "/v1/model"), ModelInfo)

    def _send(self, method: str, path: str, body: Any = None) -> httpx.Response:
        attempt = 0
        outcome: httpx.Response | Exception
        while True:
            try:
                outcome = self._http.request(method, path, json=body)
            except _RETRY_TRANSPORT as exc:
                outcome = exc
            step = self.retry.next_step(attempt, outcome)
            if isinstance(step, httpx.Response):
                return step
            time.sleep(step)
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncElectricClient(_Common):
    """The same API for asyncio; requests from concurrent tasks share one connection pool."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 retry: RetryPolicy | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 16):
        super().__init__(base_url, api_key, timeout_s, retry)
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout,
                                       headers=self.headers, transport=transport, limits=limits)

    async def score(self, sentences: Sequence[str], truncate: bool = False) -> ScoreResponse:
        body = {"sentences": list(sentences), "truncate": truncate}
        return self._parse(await self._send("POST", "/v1/score", body), ScoreResponse)

    async def rerank(self, hypotheses: Sequence[HypothesisLike], *,
                     lm_weight: float | None = None, length_bonus: float | None = None,
                     truncate: bool = False, rank_prior: str | None = None) -> RerankResponse:
        body = _rerank_body(lm_weight, length_bonus, truncate, rank_prior,
                            hypotheses=[_hypothesis(h) for h in hypotheses])
        return self._parse(await self._send("POST", "/v1/rerank", body), RerankResponse)

    async def rerank_lists(self, lists: Sequence[HypothesisList | Mapping[str, Any]], *,
                           lm_weight: float | None = None, length_bonus: float | None = None,
                           truncate: bool = False, rank_prior: str | None = None) -> RerankResponse:
        body = _rerank_body(lm_weight, length_bonus, truncate, rank_prior,
                            lists=[_list_body(lst) for lst in lists])
        return self._parse(await self._send("POST", "/v1/rerank", body), RerankResponse)

    async def model(self) -> ModelInfo:
        return self._parse(await self._send("GET", "/v1/model"), ModelInfo)

    async def _send(self, method: str, path: str, body: Any = None) -> httpx.Response:
        attempt = 0
        outcome: httpx.Response | Exception
        while True:
            try:
                outcome = await self._http.request(method, path, json=body)
            except _RETRY_TRANSPORT as exc:
                outcome = exc
            step = self.retry.next_step(attempt, outcome)
            if isinstance(step, httpx.Response):
                return step
            await asyncio.sleep(step)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
