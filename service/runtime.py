"""The running service: artifact, tokenizer, engine and batcher, and the phase they are in.

Built cheaply by ``create_app`` (nothing loads then); ``start`` loads the artifact in the app's
lifespan, a background warm-up turns it ready, ``drain`` (SIGTERM) stops admitting work and
waits for admitted requests, ``close`` releases everything. Handlers reach it through the typed
dependencies in service/app.py.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from service.artifact import ArtifactError, Manifest, RankPrior, load_manifest
from service.batcher import Batcher
from service.batching import BatchLimits, resolve_limits
from service.engine import CUDA, EnergyEngine, OnnxEngine, warm_up
from service.errors import NotReady, ServiceError
from service.metrics import Metrics
from service.schemas import SentenceScore
from service.scoring import EMPTY, Weights, resolve_weights, sentence_score
from service.settings import Settings
from service.tokenization import Encoded, SentenceTokenizer

logger = logging.getLogger("electric.service")

# Up to this many characters a request is tokenized on the event loop: ~100 µs of work, about
# what the hop to a worker thread and back costs (measured with the MiniLM tokenizer).
_INLINE_CHARS = 256
# How long /readyz waits for its probe batch, well inside a kubelet probe's default 1 s.
_PROBE_TIMEOUT_S = 0.8


class Phase(enum.Enum):
    LOADING = "loading"
    WARMING_UP = "warming up"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    STOPPED = "stopped"


class Runtime:
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
        self.metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)

    # -- what handlers use -------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            raise NotReady("the model is still loading")
        return self._manifest

    @property
    def tokenizer(self) -> SentenceTokenizer:
        if self._tokenizer is None:
            raise NotReady("the model is still loading")
        return self._tokenizer

    @property
    def engine(self) -> EnergyEngine:
        if self._engine is None:
            raise NotReady("the model is still loading")
        return self._engine

    @property
    def batcher(self) -> Batcher:
        if self._batcher is None:
            raise NotReady("the model is still loading")
        return self._batcher

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
        return resolve_weights(Weights.of_section(self.manifest.rerank.model_dump()),
                               lm_weight, length_bonus, rank_prior)

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold a place among the requests a drain waits for; 503 unless ready."""
        if not self.ready:
            raise NotReady(f"the service is {self.state}, not ready for requests")
        self._admitted += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._admitted -= 1
            if self._admitted == 0:
                self._quiet.set()

    async def encode(self, texts: Sequence[str], truncate: bool,
                     field: str = "sentences") -> list[Encoded]:
        """Tokenize; a large request in a worker thread so that it cannot stall the event loop.

        A short sentence takes tens of microseconds, less than the hop to a thread and back,
        so small requests are tokenized in place.
        """
        if sum(len(t) for t in texts) <= _INLINE_CHARS:
            return self.tokenizer.encode(texts, truncate, field)
        return await asyncio.to_thread(self.tokenizer.encode, texts, truncate, field)

    async def score(self, encoded: Sequence[Encoded]) -> list[SentenceScore]:
        """Scores in input order; texts without tokens score 0 without reaching the engine."""
        todo = [e for e in encoded if e.num_tokens]
        energies = await self.batcher.score([e.ids for e in todo], self.settings.request_timeout_s)
        it = iter(energies)
        scores = [sentence_score(e, next(it)) if e.num_tokens else EMPTY for e in encoded]
        self.metrics.tokens_scored.inc(sum(e.num_tokens for e in todo))
        return scores

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
        self.limits = resolve_limits(provider == CUDA, s.max_batch_tokens, s.max_batch_size,
                                     s.sort_window, s.max_padding)
        self._batcher = Batcher(engine, self.limits, pad_id=manifest.tokenizer.pad_id,
                                max_queue=s.max_queue, metrics=self.metrics)
        self._batcher.start()
        self.metrics.model_info.labels(name=manifest.name, variant=engine.variant,
                                       provider=provider).set(1)
        logger.info("serving %s, variant %s on %s, batching %s", manifest.name, engine.variant,
                    provider, self.limits)
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
            self._tokenizer = SentenceTokenizer.from_file(path, max_length)
        except Exception as exc:  # tokenizers raises bare Exceptions on a bad file
            raise ArtifactError(f"{path} is not a usable tokenizers file: {exc}") from exc
        try:
            self._engine = self._injected or OnnxEngine.load(
                folder, manifest, self.settings.variant, self.settings.intra_op_threads)
        except ArtifactError:
            raise
        except Exception as exc:  # ORT's InvalidProtobuf, Fail, ... on a corrupt model file
            raise ArtifactError(f"ONNX Runtime cannot load the model in {folder}: {exc}") from exc
        self._manifest = manifest

    async def _warm_up(self, max_batch_tokens: int) -> None:
        try:
            if self.settings.warmup:
                await asyncio.to_thread(
                    warm_up, self.engine, self.manifest.tokenizer.pad_id,
                    self.manifest.architecture.max_positions, max_batch_tokens)
        except Exception:
            logger.exception("warm-up failed; /readyz and /healthz now answer 503")
            self.phase = Phase.FAILED
            return
        if self.phase is Phase.WARMING_UP:
            self.phase = Phase.READY
            logger.info("ready")

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

