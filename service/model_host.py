"""The model a process serves: artifact, tokenizer, engine and batcher, and the phase they are in.

Built cheaply by ``create_app`` (nothing loads then); ``start`` loads the artifact in the app's
lifespan, a background warm-up turns it ready, ``drain`` (SIGTERM) stops admitting work and
waits for admitted requests, ``close`` releases everything. Handlers reach it through the typed
dependencies in service/deps.py.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np

from service import memory
from service.artifact import ArtifactError, Manifest, RankPrior, load_manifest
from service.batch_policy import BatchLimits, resolve_limits
from service.batcher import Batcher
from service.disconnect import Client, unless_client_leaves
from service.engine import EnergyEngine, OnnxEngine, warm_up
from service.errors import DeadlineExceeded, NotReady, PayloadTooLarge, ServiceError, too_long
from service.metrics import Metrics
from service.providers import provider_of
from service.schemas import ModelInfo
from service.scoring import EMPTY, Scored, Weights, resolve_weights, sentence_score
from service.settings import Settings
from service.timing import current_timing
from service.tokenization import Encoded, SentenceTokenizer, TooLong

logger = logging.getLogger("electric.service")

# Up to this many characters a request is tokenized on the event loop: ~100 µs of work, about
# what the hop to a worker thread and back costs (measured with the MiniLM tokenizer).
_INLINE_CHARS = 256
# How long /readyz waits for its probe batch, well inside a kubelet probe's default 1 s.
_PROBE_TIMEOUT_S = 0.8
# After tokenizing a request this large, give the freed memory back (service/memory.py).
_TRIM_AFTER_CHARS = 1 << 16
# A request may ask for at most this share of the deadline's engine time, measured at warm-up:
# the rest is for the requests it shares the engine with, and for the measurement's error.
_REQUEST_SHARE = 0.5

# When the request being handled was admitted (loop time); its deadline runs from there.
_admitted_at: ContextVar[float | None] = ContextVar("admitted_at", default=None)


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask, beyond the schema's limits; /v1/model shows it."""

    max_request_tokens: int | None
    """Positions (specials included) one request may send to the engine; None: no limit."""
    source: str
    """Where that figure comes from, in words."""
    max_sentence_chars: int
    """Longest text tokenized at all."""
    positions_per_s: float | None
    """Engine throughput measured at warm-up on the longest sequences; None if not measured."""


class Phase(enum.Enum):
    LOADING = "loading"
    WARMING_UP = "warming up"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    STOPPED = "stopped"


T = TypeVar("T")


def _loaded(part: T | None) -> T:
    """A part ``start`` sets, or NotReady before it has."""
    if part is None:
        raise NotReady("the model is still loading")
    return part


class ModelHost:
    """Hosts one model artifact for the app. (Named for what it does: "runtime" here always
    means ONNX Runtime.)"""

    def __init__(self, settings: Settings, engine: EnergyEngine | None = None):
        """``engine``: run this instead of the artifact's ONNX file (tests inject fakes)."""
        self.settings = settings
        self.metrics = Metrics()
        self.phase = Phase.LOADING
        self._injected = engine
        self._manifest: Manifest | None = None
        self._tokenizer: SentenceTokenizer | None = None
        self._engine: EnergyEngine | None = None
        self._batcher: Batcher | None = None
        self.limits: BatchLimits | None = None
        """The batching limits in force, device defaults resolved; set by ``start``."""
        self._warmup: asyncio.Task[None] | None = None
        self._admitted = 0
        self._quiet = asyncio.Event()
        self._tokenizing = asyncio.Semaphore(settings.tokenize_concurrency)
        self.request_limits: RequestLimits | None = None
        """Set by the warm-up (with the throughput it measured)."""
        self.metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)

    # -- what handlers use -------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        return _loaded(self._manifest)

    @property
    def tokenizer(self) -> SentenceTokenizer:
        return _loaded(self._tokenizer)

    @property
    def engine(self) -> EnergyEngine:
        return _loaded(self._engine)

    @property
    def batcher(self) -> Batcher:
        return _loaded(self._batcher)

    @property
    def model_name(self) -> str:
        return self.manifest.name

    @property
    def max_tokens(self) -> int:
        """Most scored tokens one text may have."""
        return self.tokenizer.max_tokens

    @property
    def max_sentences(self) -> int:
        """Most sentences one /v1/score or /v1/tokenize request may send (413 past it)."""
        return self.settings.max_sentences

    @property
    def max_hypotheses(self) -> int:
        """Most hypotheses (or texts, documents) one re-ranking request may send (413 past it)."""
        return self.settings.max_hypotheses

    def info(self) -> ModelInfo:
        """GET /v1/model: the manifest without file names, the variant and provider running
        it, and the limits in force."""
        engine = self.engine
        return ModelInfo(
            manifest=self.manifest.public(), variant=engine.variant,
            provider=engine.providers[0] if engine.providers else "unknown",
            providers=engine.providers, max_tokens=self.max_tokens,
            batching=asdict(self.limits) if self.limits else {},
            request_limits=asdict(self.request_limits) if self.request_limits else {},
            ready=self.ready)

    @property
    def ready(self) -> bool:
        """Loaded, warmed up, not draining, and the engine not failing batch after batch."""
        batcher = self._batcher
        return (self.phase is Phase.READY and batcher is not None and batcher.alive
                and not batcher.failing)

    async def readiness(self) -> bool:
        """``ready``, asking the engine when it has been failing: one tiny batch, so that a
        replica whose fault has passed turns ready again although no traffic reaches it."""
        batcher = self._batcher
        if self.phase is not Phase.READY or batcher is None or not batcher.failing:
            return self.ready
        probe = self.tokenizer.encode([""], truncate=False)[0].ids  # [CLS] [SEP]
        try:
            await batcher.score([probe], _PROBE_TIMEOUT_S)
        except ServiceError:
            return False
        return self.ready

    @property
    def state(self) -> str:
        """The phase in words, for refusals and probes: names what a dashboard cannot see."""
        batcher = self._batcher
        if self.phase is Phase.READY and batcher is not None:
            if not batcher.alive:
                return "stopped (its batching loop died)"
            if batcher.failing:
                return "failing (the engine failed its last batches)"
        return self.phase.value

    @property
    def alive(self) -> bool:
        """The liveness probe's answer: False when the batcher loop died or the warm-up failed,
        so that the orchestrator restarts the process (and shows a crash loop, not a replica
        that silently never turns ready)."""
        if self.phase is Phase.FAILED:
            return False
        return self._batcher is None or self._batcher.alive or self.phase is Phase.STOPPED

    def weights(self, lm_weight: float | None, length_bonus: float | None,
                rank_prior: RankPrior | None) -> Weights:
        """What a /v1/rerank request re-ranks with (service/scoring.py ``resolve_weights``)."""
        return resolve_weights(Weights.of_manifest(self.manifest), lm_weight, length_bonus,
                               rank_prior)

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold a place among the requests a drain waits for; 503 unless ready."""
        if not self.ready:
            raise NotReady(f"the service is {self.state}, not ready for requests")
        self._admitted += 1
        self._quiet.clear()
        token = _admitted_at.set(asyncio.get_running_loop().time())
        try:
            yield
        finally:
            _admitted_at.reset(token)
            self._admitted -= 1
            if self._admitted == 0:
                self._quiet.set()

    def _time_left(self) -> float:
        """Seconds to the current request's deadline (``request_timeout_s`` from admission);
        504 once it has passed."""
        timeout = self.settings.request_timeout_s
        admitted = _admitted_at.get()
        if admitted is None:  # outside a handler (the readiness probe, tests)
            return timeout
        left = admitted + timeout - asyncio.get_running_loop().time()
        if left <= 0:
            raise DeadlineExceeded(f"not scored within the request deadline of {timeout:g} s")
        return left

    async def encode(self, texts: Sequence[str], truncate: bool,
                     place: Callable[[int], str] | None = None) -> list[Encoded]:
        """Tokenize; a large request in a worker thread so that it cannot stall the event loop.
        A text the tokenizer refuses is a 422 that names it by ``place(index)``, its place in
        the request as the client wrote it (the index is into ``texts``; by default
        ``sentences[index]``).

        A short sentence takes tens of microseconds, less than the hop to a thread and back,
        so small requests are tokenized in place. Large ones take turns
        (``tokenize_concurrency`` at once, within their deadline), and after a very large one
        the freed memory goes back to the system.
        """
        try:
            return await self._encode_in_turn(texts, truncate)
        except TooLong as exc:
            where = place(exc.index) if place else f"sentences[{exc.index}]"
            raise too_long(exc, where) from None

    async def _encode_in_turn(self, texts: Sequence[str], truncate: bool) -> list[Encoded]:
        chars = sum(len(t) for t in texts)
        if chars <= _INLINE_CHARS:
            return self.tokenizer.encode(texts, truncate)
        try:
            await asyncio.wait_for(self._tokenizing.acquire(), self._time_left())
        except asyncio.TimeoutError:
            raise DeadlineExceeded("not tokenized within the request deadline of "
                                   f"{self.settings.request_timeout_s:g} s") from None
        try:
            return await asyncio.to_thread(self._encode, texts, truncate, chars)
        finally:
            self._tokenizing.release()

    def _encode(self, texts: Sequence[str], truncate: bool, chars: int) -> list[Encoded]:
        try:
            return self.tokenizer.encode(texts, truncate)
        finally:
            if chars >= _TRIM_AFTER_CHARS:
                memory.trim()

    async def infer(self, texts: Sequence[str], truncate: bool, client: Client,
                    place: Callable[[int], str] | None = None,
                    check: Callable[[list[Encoded]], None] | None = None) -> list[Scored]:
        """Admit, tokenize, score: what every scoring route does, in one place. ``client``
        (service/disconnect.py ``client_of``) tells when the client leaves, which takes its
        queued work with it; ``place`` names a text in a refusal (see :meth:`encode`);
        ``check`` may refuse the encodings before they are queued (a route's own rule, e.g. no
        empty sentence)."""
        with self.admitted():
            encoded = await self.encode(texts, truncate, place)
            if check is not None:
                check(encoded)
            return await unless_client_leaves(client, self.score(encoded))

    async def score(self, encoded: Sequence[Encoded]) -> list[Scored]:
        """Scores in input order; texts without tokens score 0 without reaching the engine.

        413 for a request with more positions than ``max_request_tokens``; 504 if its deadline
        passes first."""
        todo = [e for e in encoded if e.num_tokens]
        self._check_size(sum(e.length for e in todo))
        try:
            energies = await self.batcher.score([e.ids for e in todo], self._time_left(),
                                                current_timing.get())
        except DeadlineExceeded:
            raise DeadlineExceeded("not scored within the request deadline of "
                                   f"{self.settings.request_timeout_s:g} s") from None
        it = iter(energies)
        scores = [sentence_score(e, next(it)) if e.num_tokens else EMPTY for e in encoded]
        self.metrics.tokens_scored.inc(sum(e.num_tokens for e in todo))
        return scores

    def _check_size(self, positions: int) -> None:
        limits = self.request_limits
        if limits is None or limits.max_request_tokens is None:
            return
        if positions > limits.max_request_tokens:
            raise PayloadTooLarge(
                f"the request has {positions} tokens with [CLS] and [SEP]; the limit is "
                f"{limits.max_request_tokens} ({limits.source}); split it into smaller requests")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the artifact (in a thread: hashing and session creation take seconds), start
        the batcher, and warm up in the background so /healthz answers meanwhile."""
        self.settings.log()
        try:
            await asyncio.to_thread(self._load)
        except ArtifactError as exc:
            self.phase = Phase.FAILED
            logger.error("cannot serve %s: %s", self.settings.artifact, exc)
            raise
        engine, manifest, s = self.engine, self.manifest, self.settings
        provider = engine.providers[0] if engine.providers else "unknown"
        runs_on = provider_of(engine.providers[0] if engine.providers else None)
        self.limits = resolve_limits(runs_on, s.max_batch_tokens, s.max_batch_size,
                                     s.sort_window, s.max_padding)
        parallel = getattr(engine, "parallel_runs", 1)  # an injected engine may not say
        self._batcher = Batcher(engine, self.limits, pad_id=manifest.tokenizer.pad_id,
                                max_queue=s.max_queue, metrics=self.metrics, parallel=parallel,
                                ahead=runs_on.batches_ahead)
        self._batcher.start()
        self.metrics.model_info.labels(name=manifest.name, variant=engine.variant,
                                       provider=provider).set(1)
        logger.info("serving %s, variant %s on %s, %d batch(es) at once and %d formed ahead, "
                    "batching %s", manifest.name, engine.variant, provider, parallel,
                    runs_on.batches_ahead, self.limits)
        self.phase = Phase.WARMING_UP
        self._warmup = asyncio.get_running_loop().create_task(
            self._warm_up(self.limits.max_batch_tokens))

    def _load(self) -> None:
        """Everything that can be wrong with an artifact surfaces here as an ArtifactError
        with the reason, so start-up fails with one clear line rather than a library's."""
        folder = self.settings.artifact
        manifest = load_manifest(folder)
        max_length = manifest.architecture.max_positions
        path = folder / manifest.tokenizer.file
        try:
            self._tokenizer = SentenceTokenizer.from_file(path, max_length,
                                                          self.settings.max_sentence_chars)
        except Exception as exc:  # tokenizers raises bare Exceptions on a bad file
            raise ArtifactError(f"{path} is not a usable tokenizers file: {exc}") from exc
        try:
            self._engine = self._injected or OnnxEngine.load(
                folder, manifest, self.settings.variant, self.settings.intra_op_threads,
                self.settings.parallel_batches)
        except ArtifactError:
            raise
        except Exception as exc:  # ORT's InvalidProtobuf, Fail, ... on a corrupt model file
            raise ArtifactError(f"ONNX Runtime cannot load the model in {folder}: {exc}") from exc
        self._manifest = manifest

    async def _warm_up(self, max_batch_tokens: int) -> None:
        try:
            measured = None
            if self.settings.warmup:
                measured = await asyncio.to_thread(self._warm_up_and_measure, max_batch_tokens)
        except Exception:
            logger.exception("warm-up failed; /readyz and /healthz now answer 503")
            self.phase = Phase.FAILED
            return
        self.request_limits = self._limits_from(measured)
        logger.info("request limits: %s", self.request_limits)
        if self.phase is Phase.WARMING_UP:
            self.phase = Phase.READY
            logger.info("ready")

    def _warm_up_and_measure(self, max_batch_tokens: int) -> float:
        """Warm up, then time one more batch of the longest sequences: positions per second
        at the engine's slowest per position, since attention grows with length."""
        pad_id, length = self.manifest.tokenizer.pad_id, self.manifest.architecture.max_positions
        warm_up(self.engine, pad_id, length, max_batch_tokens)
        rows = max(1, min(64, max_batch_tokens // length))
        ids = np.full((rows, length), pad_id, dtype=np.int64)
        start = time.perf_counter()
        self.engine.run(ids, np.ones_like(ids))
        return rows * length / max(time.perf_counter() - start, 1e-9)

    def _limits_from(self, positions_per_s: float | None) -> RequestLimits:
        s, chars = self.settings, self.tokenizer.max_chars
        if s.max_request_tokens is not None:
            return RequestLimits(s.max_request_tokens, "ELECTRIC_MAX_REQUEST_TOKENS", chars,
                                 positions_per_s)
        if positions_per_s is None:
            return RequestLimits(None, "not measured: warm-up is off", chars, None)
        budget = max(self.tokenizer.max_tokens + 2,
                     int(positions_per_s * s.request_timeout_s * _REQUEST_SHARE))
        return RequestLimits(
            budget, f"measured {positions_per_s:,.0f} tokens/s at warm-up x "
            f"{_REQUEST_SHARE:g} of the {s.request_timeout_s:g} s deadline", chars,
            positions_per_s)

    async def wait_warm(self) -> None:
        """Until the warm-up has finished, whatever its outcome."""
        if self._warmup is not None:
            await asyncio.shield(self._warmup)

    async def drain(self) -> bool:
        """Refuse new work, let admitted requests finish; False if the bound ran out first."""
        self.phase = Phase.DRAINING
        if self._admitted == 0:
            return True
        logger.info("draining %d requests", self._admitted)
        try:
            await asyncio.wait_for(self._quiet.wait(), self.settings.drain_timeout_s)
            return True
        except asyncio.TimeoutError:
            logger.warning("drain timed out with %d requests unanswered", self._admitted)
            return False

    async def close(self) -> None:
        self.phase = Phase.STOPPED
        if self._warmup is not None:
            self._warmup.cancel()
            await asyncio.gather(self._warmup, return_exceptions=True)
        if self._batcher is not None:
            await self._batcher.close()

