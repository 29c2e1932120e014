"""Service settings: one class, read from ``ELECTRIC_*`` environment variables.

Every field says why an operator would change it. Limits that protect the process (queue, body,
batch) live here so that one place bounds memory and latency; per-request shape rules live on
the request schemas.

``load_settings`` turns a refusal into one line per problem (the variable, the value, the rule)
that never holds a secret; ``unknown_variables`` finds ``ELECTRIC_*`` names nothing reads.
"""

from __future__ import annotations

import difflib
import logging
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

logger = logging.getLogger("electric.service")

VariantChoice = Literal["auto", "fp32", "fp16", "int8"]

ENV_PREFIX = "ELECTRIC_"
# ELECTRIC_* variables read outside this class, so that they are not reported as unknown.
OTHER_VARIABLES = {
    "ELECTRIC_API_KEY": "the key `electric score|rerank|tune --url` sends (service/local.py)",
    "ELECTRIC_EVAL_DIR": "the dev sets' folder of `electric eval` (evaluation/sets.py)",
    "ELECTRIC_BENCH_CORPUS": "the text of `electric bench service` (bench/service_load.py)",
}
_REDACTED = "**********"


def default_artifact() -> Path:
    """The embedded artifact that ``make serve`` runs: ``<repo>/models/electric-minilm``."""
    return Path(__file__).resolve().parent.parent / "models" / "electric-minilm"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    artifact: Path = Field(default_factory=default_artifact)
    """Artifact folder to serve (electric.json, tokenizer.json, *.onnx). Point it at a mounted
    volume to serve another model without rebuilding the image."""
    variant: VariantChoice = "auto"
    """Which ONNX file to run. ``auto``: fp16 on a CUDA GPU, int8 on CPU, each falling back to
    what the artifact has (fp32 last on CPU, first on GPU). An int8 exported with the
    ``dynamic`` scheme scores a sentence differently by batch; ``rowwise`` (the embedded
    model's) and fp32 do not."""
    intra_op_threads: int = Field(default=0, ge=0, le=512)
    """ONNX Runtime threads per batch. 0: on a CPU, the cores divided among the batches run at
    once (``parallel_batches``); the cores are the container's CPU quota or affinity mask where
    one is set (ORT itself cannot see cgroup quotas), else the machine's."""
    parallel_batches: int = Field(default=0, ge=0, le=64)
    """Batches the engine runs at once, on one session. 0: on a CPU one per core up to 4
    (each then single-threaded, unless ``intra_op_threads`` is set: then cores divided by it);
    on a GPU 1. Two single-threaded batches on two cores score about 1.4x the tokens per second
    of one two-threaded batch, since ORT's parallel regions scale poorly at these sizes
    (docs/PERFORMANCE.md); ``1`` with ``intra_op_threads`` equal to the cores is the old
    one-batch-at-a-time engine, with lower latency for a lone request."""
    host: str = "127.0.0.1"
    """Interface to bind. Containers set 0.0.0.0; the default keeps a laptop run private."""
    port: int = Field(default=8000, ge=1, le=65535)
    """TCP port to listen on."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity of the service and of uvicorn."""
    access_log: bool = False
    """One JSON line per request on the ``electric.access`` logger: time, client address,
    method, path, status, duration, bytes in and out; never a body, a query string or a header.
    Off by default: at thousands of requests per second it costs throughput, and /metrics
    already counts requests by route and status."""

    max_batch_tokens: int | None = Field(default=None, ge=1)
    """Padded cost budget of one batch (sequences × longest sequence). Unset: 1024 on a CPU
    (a batch then takes ~0.1 s on two cores), 16384 on a GPU. Larger batches raise GPU
    throughput and every request's wait behind the batch in front of it."""
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    """Most sequences in one batch, whatever their length."""
    sort_window: int = Field(default=256, ge=1)
    """How many queued sequences the batcher may reorder by length to cut padding, taken from
    the requests in the order they are served (least work left first; see service/batcher.py).
    Larger windows pad less but let a sequence wait behind more batches."""
    max_padding: float | None = Field(default=None, ge=0.0, le=1.0)
    """Largest share of a batch that may be padding; a length outlier waits for the next batch
    instead. Unset: 0.05 on a CPU, where a padded position costs as much as a real one and
    batch size barely matters past a few rows; 0.5 on a GPU, where wide batches pay."""
    max_queue: int = Field(default=4096, ge=1)
    """Queued sequences before new requests get 429. Bounds memory and worst-case queue wait;
    the queue-depth gauge drives autoscaling long before this is reached."""
    max_sentences: int = Field(default=256, ge=1)
    """Most sentences one /v1/score or /v1/tokenize request may carry (413 above)."""
    max_hypotheses: int = Field(default=1024, ge=1)
    """Most hypotheses one /v1/rerank request may carry, summed over its lists (413 above)."""
    max_sentence_chars: int | None = Field(default=None, ge=1)
    """Longest text, in characters, that is tokenized at all; longer ones get 422, or with
    ``truncate`` only their beginning is tokenized. Unset: 32 characters per token the model
    scores (16,320 for 510), far more than real text needs. Tokenizing holds ~600 bytes per
    token, so this is what keeps one refused request from costing hundreds of MB."""
    max_request_tokens: int | None = Field(default=None, ge=1)
    """Most positions (tokens with [CLS] and [SEP]) one request may send to the model (413
    above). Unset: what the warm-up measured this replica to score in half of
    ``request_timeout_s``, so that a request that is admitted can be answered in time
    (/v1/model shows the figure and where it came from)."""
    tokenize_concurrency: int = Field(default=2, ge=1, le=64)
    """Large requests tokenized at once, each in a worker thread; the rest wait their turn
    (within their deadline). Bounds the memory and CPU that tokenizing can take from the
    engine."""
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    """Largest request body in bytes (413 above); bounds the work a single request can ask."""
    max_concurrent_requests: int = Field(default=512, ge=1)
    """POST requests handled at once (read, tokenized, queued or running); more get 429 before
    their body is read. With ``max_body_bytes`` it bounds the memory requests can hold."""
    request_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """Deadline from admission to answer. Work still queued past it is dropped and the client
    gets 504, so an overloaded replica sheds load instead of answering stale requests. A body
    must also arrive within it (408 otherwise), so a stalled client cannot hold a slot."""
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """Time a connection has to send a whole request head, counted from connect (or from the
    end of the previous response). Past it: 408 if part of a head came, a plain close if
    nothing did. Cuts idle sockets and slowloris heads; uvicorn's keep-alive timeout only runs
    between requests."""
    body_start_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    """Time from the end of a POST's head to the first byte of its body (408 after), so that
    a client declaring a body and sending none frees its request slot sooner than
    ``request_timeout_s``, which bounds the whole body."""
    linger_s: float = Field(default=30.0, gt=0, le=3600)
    """After answering before a request body has all arrived (413, 408, a refusal), how long
    the connection keeps reading and dropping what the client still sends, so that a client
    that writes its whole body before reading (http.client, urllib, requests) gets the answer
    instead of a reset. Nothing dropped is kept: memory does not grow with the body. nginx
    bounds its lingering close the same way (lingering_time 30 s)."""
    linger_idle_s: float = Field(default=5.0, gt=0, le=3600)
    """The lingering close also ends when the client sends nothing for this long (nginx's
    lingering_timeout, 5 s)."""
    max_connections: int | None = Field(default=None, ge=1)
    """Open connections served normally. Past it an idle connection (nothing sent since
    connect or since its last answer) is closed to make room; when none is idle, a new
    connection may still ask /healthz, /readyz or /metrics, and anything else gets 503 with
    Retry-After. Unset: the open-file limit (``ulimit -n``) less 160 for the process's own
    files, at most 8192, so that the probes are never refused for want of a descriptor."""
    max_requests_per_peer: int = Field(default=0, ge=0)
    """POST requests one client address may have in progress at once (429 past it); 0 is off,
    the default. Behind a Kubernetes Service, an ingress or any proxy, every request may
    arrive from one of a few addresses, so set it only where clients reach the pod directly
    (or where ``trusted_proxies`` names the proxies, so the real client is known)."""
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated addresses or CIDR networks of the proxies in front (an ingress
    controller's pods, a load balancer: ``10.0.0.0/8,fd00::/8``). A request whose connection
    comes from one of them is taken to come from the client its ``Forwarded`` or
    ``X-Forwarded-For`` header records (the nearest untrusted hop), for the per-client limit
    and the access log. From any other address the headers are ignored, so a client cannot
    claim another's address. Empty (the default): the connection's peer is the client."""
    drain_timeout_s: float = Field(default=20.0, ge=0, le=3600)
    """On SIGTERM, how long to keep working through admitted requests before exiting. Keep it
    under the pod's terminationGracePeriodSeconds."""
    warmup: bool = True
    """Run a few dummy batches before /readyz turns ready, so the first real request does not
    pay for allocator growth and kernel selection."""
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Comma-separated keys; when set, /v1/* requires ``Authorization: Bearer <key>`` (or
    ``X-API-Key``). The probes stay open for the cluster, /metrics unless
    ``metrics_require_key``."""
    metrics_require_key: bool = False
    """With API keys set, make /metrics want one too. Off by default: Prometheus usually
    scrapes from inside the cluster, where a NetworkPolicy is the simpler guard."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated origins (``https://app.example.com``, or ``*``) whose browser pages may
    call the API. Empty (the default): no CORS headers, so browsers keep other sites out."""

    @field_validator("api_keys", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        from service.proxies import parse_networks

        parse_networks(value)
        return value

    @model_validator(mode="after")
    def _check_queue(self) -> Settings:
        # A request bigger than the whole queue could never be admitted.
        for name in ("max_sentences", "max_hypotheses"):
            if getattr(self, name) > self.max_queue:
                raise ValueError(
                    f"{env_name(name)}={getattr(self, name)} exceeds "
                    f"{env_name('max_queue')}={self.max_queue}: a request that large could "
                    "never be admitted")
        return self

    def redacted(self) -> dict[str, Any]:
        """The settings as they may be logged: secrets replaced by asterisks."""
        data = self.model_dump(mode="json")
        for name in secret_fields():
            value = getattr(self, name)
            data[name] = [_REDACTED for _ in value] if isinstance(value, list) else _REDACTED
        return data

    def log(self) -> None:
        logger.info("settings: %s", self.redacted())


class InvalidSettings(ValueError):
    """A setting that cannot be used; the message is one line, fit for an operator, and holds
    no secret value."""


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _holds_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_holds_secret(a) for a in typing.get_args(annotation))


def secret_fields() -> frozenset[str]:
    """Fields whose values must never be logged or echoed in an error."""
    return frozenset(name for name, info in Settings.model_fields.items()
                     if _holds_secret(info.annotation))


def load_settings(overrides: Mapping[str, Any] | None = None,
                  labels: Mapping[str, str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """``Settings`` from the environment and ``overrides``, or :class:`InvalidSettings`.

    pydantic's own message is not shown: a model-level error carries every input as
    ``input_value``, API keys included. ``labels`` names where an override came from (a CLI
    flag such as ``--port``); other fields are named by their environment variable.
    """
    overrides = dict(overrides or {})
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        message = "; ".join(_describe(error, labels or {}) for error in
                            exc.errors(include_url=False, include_context=False))
    except _SourceError as exc:  # a value pydantic-settings could not even decode
        message = str(exc)
    raise InvalidSettings(_scrub(message, overrides, os.environ if environ is None else environ))


def _describe(error: Any, labels: Mapping[str, str]) -> str:
    loc = error["loc"]
    reason = str(error["msg"]).removeprefix("Value error, ")
    if not loc:  # a model validator: its message names the variables and values itself
        return reason
    field = str(loc[0])
    if field not in Settings.model_fields:
        return f"{labels.get(field, field)}: unknown setting"
    where = labels.get(field, env_name(field))
    if field in secret_fields():
        return f"{where}: {reason} (value not shown: it is secret)"
    return f"{where}={error['input']!r}: {reason}"


def _scrub(message: str, overrides: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """Belt and braces: blank out every secret value given, wherever it appears."""
    secrets: list[str] = []
    for field in secret_fields():
        given = [overrides.get(field)] + [v for k, v in environ.items()
                                          if k.upper() == env_name(field)]
        for value in given:
            if value is None:
                continue
            items = value if isinstance(value, list) else [value]
            for item in items:
                text = item.get_secret_value() if isinstance(item, SecretStr) else str(item)
                secrets += [text, *(part.strip() for part in text.split(","))]
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        message = message.replace(secret, _REDACTED)
    return message


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """``ELECTRIC_*`` variables nothing reads (typos), each with the closest known name."""
    environ = os.environ if environ is None else environ
    known = {env_name(field) for field in Settings.model_fields} | set(OTHER_VARIABLES)
    found = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings matches names case-insensitively
        if upper.startswith(ENV_PREFIX) and upper not in known:
            close = difflib.get_close_matches(upper, known, n=1, cutoff=0.75)
            found.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return found


def unknown_variables_warning(environ: Mapping[str, str] | None = None) -> str | None:
    """One line naming the unknown ``ELECTRIC_*`` variables, or None when there are none."""
    unknown = unknown_variables(environ)
    if not unknown:
        return None
    return (f"unknown environment variable{'s' if len(unknown) > 1 else ''}, ignored: "
            f"{', '.join(unknown)}; the settings are listed in service/settings.py")
