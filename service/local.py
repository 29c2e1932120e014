"""Where the CLI's scores come from: the model in this process, or a running service.

Both give :class:`~service.scoring.Scored` objects, in input order, from an iterator of
texts, holding only a bounded window of them at a time:

- :class:`InProcessScorer` loads an artifact the way the service does (service/engine.py,
  service/tokenization.py) and batches each window of texts with the service's own policy
  (service/batch_policy.py ``drain``): length-sorted within the window, padded cost under the
  device's token budget. It is the one artifact -> tokenizer -> engine -> scores loop outside
  the service: the evaluation (evaluation/scorers.py) and the engine benchmark
  (bench/service_load.py) run theirs through it, with their own batches.
- :class:`RemoteScorer` sends windows of texts to ``/v1/score`` through the async client, a
  few requests in flight at once, and yields the answers in order. Retries and Retry-After are
  the client's (service/client.py).

Blank texts score 0 with no tokens in both (an empty ASR hypothesis is a valid one); the
service's /v1/score refuses them, so they never travel.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from service.artifact import load_manifest
from service.batch_policy import BatchLimits, drain, pad, resolve_limits
from service.client import AsyncElectricClient, ElectricError
from service.engine import EnergyEngine, OnnxEngine
from service.providers import provider_of
from service.schemas import SentenceScore
from service.scoring import EMPTY, Scored, Weights, sentence_score
from service.settings import VariantChoice, default_artifact
from service.tokenization import Encoded, SentenceTokenizer, TooLong, TooManyChars

WINDOW = 256
"""Texts tokenized and batched together in process: bounds memory, and is the sort window."""
MAX_BATCH_SIZE = 64
"""As the service's default ``max_batch_size``."""


class TextRefused(ValueError):
    """A text the model or the service will not score; the message completes "the text ..."."""

    def __init__(self, text: str, message: str):
        self.text = text
        super().__init__(message)


class TextTooLong(TextRefused):
    """A text with more tokens than the model takes, and no ``--truncate``."""

    def __init__(self, text: str, num_tokens: int | str, max_tokens: int | str):
        self.num_tokens, self.max_tokens = num_tokens, max_tokens
        super().__init__(text, f"has {num_tokens} tokens, the model scores at most "
                               f"{max_tokens}; pass --truncate to cut it")


class TextTooManyChars(TextRefused):
    """A text longer than the tokenizer ever takes, and no ``--truncate``."""

    def __init__(self, text: str, chars: int, max_chars: int):
        self.chars, self.max_chars = chars, max_chars
        super().__init__(text, f"has {chars} characters; at most {max_chars} are tokenized, "
                               "far more than the model scores; pass --truncate to score its "
                               "beginning")


class TextScorer(Protocol):
    name: str
    """The model's name, as its manifest gives it."""

    def defaults(self) -> Weights:
        """The re-ranking weights and rank prior the model's manifest carries (``electric
        tune`` writes them): the defaults of service/scoring.py ``resolve_weights``."""
        ...

    def stream(self, texts: Iterable[str], truncate: bool = False) -> Iterator[Scored]:
        ...

    def close(self) -> None: ...


def _windows(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while window := list(islice(it, size)):
        yield window


class InProcessScorer:
    def __init__(self, folder: Path, variant: VariantChoice = "auto", threads: int = 0,
                 engine: EnergyEngine | None = None, window: int = WINDOW):
        """``engine``: run this instead of the artifact's ONNX file (tests inject fakes)."""
        self.manifest = load_manifest(folder)
        self.name = self.manifest.name
        self.tokenizer = SentenceTokenizer.from_file(
            folder / self.manifest.tokenizer.file, self.manifest.architecture.max_positions)
        self.engine = engine or OnnxEngine.load(folder, self.manifest, variant, threads)
        provider = provider_of(self.engine.providers[0] if self.engine.providers else None)
        self.limits = resolve_limits(provider, None, MAX_BATCH_SIZE, window, None)
        self._window = window

    def defaults(self) -> Weights:
        return Weights.of_manifest(self.manifest)

    def stream(self, texts: Iterable[str], truncate: bool = False) -> Iterator[Scored]:
        for window in _windows(texts, self._window):
            yield from self._score_window(window, truncate)

    def _score_window(self, texts: Sequence[str], truncate: bool) -> list[Scored]:
        try:
            encoded = self.tokenizer.encode(texts, truncate)
        except TooManyChars as exc:
            raise TextTooManyChars(texts[exc.index], exc.chars, exc.max_chars) from None
        except TooLong as exc:
            raise TextTooLong(texts[exc.index], exc.num_tokens, exc.max_tokens) from None
        return self.score_batches(encoded, self.batches(encoded))

    def batches(self, encoded: Sequence[Encoded],
                limits: BatchLimits | None = None) -> Iterator[list[int]]:
        """Indices of ``encoded`` batched with the service's policy under ``limits`` (default:
        this scorer's); texts without tokens are in none, they score :data:`EMPTY`."""
        rows = [i for i, e in enumerate(encoded) if e.num_tokens]
        for picked in drain([encoded[i].length for i in rows], limits or self.limits):
            yield [rows[p] for p in picked]

    def padded(self, encoded: Sequence[Encoded],
               batch: Sequence[int]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The engine's ``(ids, mask)`` inputs, (B, T) each, for ``encoded[i]`` with i in ``batch``."""
        return pad([encoded[i].ids for i in batch], self.manifest.tokenizer.pad_id)

    def score_batches(self, encoded: Sequence[Encoded],
                      batches: Iterable[Sequence[int]]) -> list[Scored]:
        """Run each batch of indices through the engine and score its rows; an index in no
        batch scores :data:`EMPTY`."""
        results: list[Scored] = [EMPTY] * len(encoded)
        for batch in batches:
            energies = self.engine.run(*self.padded(encoded, batch))  # (B, T)
            for row, i in enumerate(batch):
                results[i] = sentence_score(encoded[i], energies[row, :encoded[i].length])
        return results

    def close(self) -> None:
        pass


_TOO_LONG = re.compile(r"sentences\[(\d+)\] has (\d+) tokens, the model scores at most (\d+)")
_REFUSED = re.compile(r"sentences\[(\d+)\](?::\s*)?")


class RemoteScorer:
    def __init__(self, url: str, api_key: str | None = None, concurrency: int = 8,
                 request_size: int = 64, timeout_s: float = 120.0, client: Any = None):
        """``client``: an :class:`AsyncElectricClient` to use instead of one for ``url``."""
        if concurrency < 1 or request_size < 1:
            raise ValueError("concurrency and request size must be at least 1")
        self._loop = asyncio.new_event_loop()
        self._client: AsyncElectricClient = client or AsyncElectricClient(
            url, api_key=api_key, timeout_s=timeout_s, max_connections=concurrency)
        self._concurrency, self._request_size = concurrency, request_size
        try:
            info = self._loop.run_until_complete(self._client.model())
        except BaseException:
            self.close()
            raise
        self.name = str(info.manifest.get("name", url))
        self._defaults = Weights.of_manifest(info.manifest)

    def defaults(self) -> Weights:
        return self._defaults

    def stream(self, texts: Iterable[str], truncate: bool = False) -> Iterator[Scored]:
        # The loop only runs while we wait on the oldest request, which is enough: the other
        # requests in flight progress meanwhile, and the caller's work between is brief.
        inflight: deque[asyncio.Task[list[Scored]]] = deque()
        try:
            for window in _windows(texts, self._request_size):
                inflight.append(self._loop.create_task(self._score(window, truncate)))
                if len(inflight) >= self._concurrency:
                    yield from self._loop.run_until_complete(inflight.popleft())
            while inflight:
                yield from self._loop.run_until_complete(inflight.popleft())
        finally:
            for task in inflight:
                task.cancel()
            if inflight:
                self._loop.run_until_complete(asyncio.gather(*inflight, return_exceptions=True))

    async def _score(self, texts: Sequence[str], truncate: bool) -> list[Scored]:
        todo = [t for t in texts if t.strip()]
        if not todo:
            return [EMPTY] * len(texts)
        try:
            response = await self._client.score(todo, truncate)
        except ElectricError as exc:
            # Name the text the service refused, so that the command can name its line.
            too_long = _TOO_LONG.search(exc.message) if exc.status == 422 else None
            if too_long:
                raise TextTooLong(todo[int(too_long.group(1))], too_long.group(2),
                                  too_long.group(3)) from None
            refused = _REFUSED.search(exc.message) if exc.status == 422 else None
            if refused and int(refused.group(1)) < len(todo):
                raise TextRefused(todo[int(refused.group(1))], "was refused by the service: "
                                  + _REFUSED.sub("", exc.message, count=1)) from None
            raise
        it = map(_scored, response.results)
        return [next(it) if t.strip() else EMPTY for t in texts]

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._client.aclose())
            self._loop.close()


def _scored(s: SentenceScore) -> Scored:
    return Scored(score=s.score, num_tokens=s.num_tokens, tokens=s.tokens, energies=s.energies,
                  offsets=s.offsets, truncated=s.truncated)


def add_scorer_arguments(p: argparse.ArgumentParser) -> None:
    """The options that pick where scores come from, shared by score, rerank and tune."""
    g = p.add_argument_group("model (in process unless --url is given)")
    g.add_argument("--url", help="score with a running service at this URL instead")
    g.add_argument("--api-key", default=os.environ.get("ELECTRIC_API_KEY"),
                   help="with --url: bearer key (default: $ELECTRIC_API_KEY)")
    g.add_argument("--concurrency", type=int, default=8, help="with --url: requests in flight")
    g.add_argument("--request-size", type=int, default=64,
                   help="with --url: sentences per request (at most the service's "
                        "max_sentences, 256 by default)")
    g.add_argument("--artifact", type=Path, default=None,
                   help="artifact folder (default: the embedded models/electric-minilm)")
    g.add_argument("--variant", choices=["auto", "fp32", "fp16", "int8"], default="auto")
    g.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime intra-op threads (0 = all cores)")
    g.add_argument("--truncate", action="store_true",
                   help="cut texts longer than the model takes instead of stopping")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr (default: when stderr is a terminal)")


def open_scorer(args: argparse.Namespace) -> TextScorer:
    if args.url:
        if args.artifact is not None:
            raise ValueError("--artifact and --url exclude each other: the service at --url "
                             "serves its own model")
        return RemoteScorer(args.url, args.api_key, args.concurrency, args.request_size)
    folder: Path = args.artifact or default_artifact()
    return InProcessScorer(folder, args.variant, args.threads)
