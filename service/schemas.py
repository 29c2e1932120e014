"""Request and response bodies of the HTTP API (v1).

Shape rules (types, text a tokenizer can take, non-empty lists, bounded numbers) live here and
give 422. Size limits that depend on the deployment (sentences per request, hypotheses per
request) come from Settings and give 413; the handlers check them on admission.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    FiniteFloat,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.artifact import RankPrior

if TYPE_CHECKING:  # only for annotations: the client imports this module without the core's
    from service.scoring import Ranked, Scored

# Bounds that keep every combined score finite: with them, base + lm_weight * score +
# length_bonus * num_tokens cannot overflow a float64 whatever the model returns (energies are
# finite float32). They are orders of magnitude past any tuned value (service/rerank/tuning.py).
MAX_BASE_SCORE = 1e9
MAX_LM_WEIGHT = 1e6
MAX_LENGTH_BONUS = 1e6
MAX_ID_CHARS = 256

# C0 and C1 control characters other than tab, newline and carriage return, and lone
# surrogates (JSON's "\ud800" escapes): no tokenizer input, and a surrogate cannot even be
# encoded back to UTF-8 for the response.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class _Request(BaseModel):
    # A misspelt field ("sentence", "lmweight") is an error, not a silent default; strict, so
    # that "truncate": "no" or "lm_weight": "0.5" is refused rather than guessed at.
    model_config = ConfigDict(extra="forbid", strict=True)


def _plain(text: str) -> str:
    bad = _UNSAFE.search(text)
    if bad is not None:
        char = bad.group()
        kind = "lone surrogate" if "\ud800" <= char <= "\udfff" else "control character"
        raise PydanticCustomError(
            "unsafe_text", "{kind} U+{code} at character {at}; text may hold no control "
            "characters besides tab, newline and carriage return, and must be valid Unicode",
            {"kind": kind, "code": f"{ord(char):04X}", "at": bad.start()})
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError(
            "blank_text", "empty or whitespace-only text; /v1/score needs at least one token "
            "(an empty hypothesis is valid in /v1/rerank)")
    return text


# The control-character rule in the OpenAPI document, for clients and schema-driven tests
# (lone surrogates are no Unicode text, so a JSON Schema pattern cannot name them).
_PLAIN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
Text = Annotated[str, AfterValidator(_plain), Field(json_schema_extra={"pattern": _PLAIN})]
NonBlank = Annotated[str, AfterValidator(_plain), AfterValidator(_not_blank),
                     Field(json_schema_extra={"pattern": _PLAIN, "minLength": 1})]


def _form(value: Any) -> str | None:
    if isinstance(value, str):
        return "string-form"
    if isinstance(value, dict | BaseModel):
        return "object-form"
    if isinstance(value, int) and not isinstance(value, bool):
        return "integer-form"
    return None


# The tags of the unions below. A discriminator makes pydantic try one member, so a refusal
# names one problem; errors.py leaves the tags out of the location it shows a client.
UNION_TAGS = frozenset({"string-form", "object-form", "integer-form", "tei-form", "cohere-form"})

ListId = Annotated[
    Annotated[str, Field(max_length=MAX_ID_CHARS), AfterValidator(_plain), Tag("string-form")]
    | Annotated[int, Field(ge=-(2**63), le=2**63 - 1), Tag("integer-form")],
    Discriminator(_form, custom_error_type="id_type",
                  custom_error_message="an id is a string or a 64-bit integer")]


class ScoreRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"sentences": ["the cat sat on the mat", "the cat sat on the hat"]},
        {"sentences": ["the children wrote books"], "truncate": True}]})

    sentences: list[NonBlank] = Field(min_length=1, description="Texts to score.")
    truncate: bool = Field(
        default=False,
        description="Cut sentences longer than the model takes instead of refusing them (422).")


class TokenizeRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"sentences": ["Café ÜBER the cat"]}]})

    sentences: list[Text] = Field(min_length=1)
    truncate: bool = Field(default=False, description="Show the tokens the model would see.")


class Hypothesis(_Request):
    text: Text
    score: FiniteFloat = Field(
        default=0.0, ge=-MAX_BASE_SCORE, le=MAX_BASE_SCORE,
        description="The recogniser's or translator's own log-domain score.")

    @property
    def given_score(self) -> float | None:
        """The score the client sent; None for an object without "score", which a rank prior
        may then stand in for (service/scoring.py ``base_scores``)."""
        return self.score if "score" in self.model_fields_set else None


HypothesisItem = Annotated[
    Annotated[Text, Tag("string-form")] | Annotated[Hypothesis, Tag("object-form")],
    Discriminator(_form, custom_error_type="hypothesis_type",
                  custom_error_message='a hypothesis is a string or an object '
                                       '{"text": ..., "score": ...}')]


def text_of(hypothesis: str | Hypothesis) -> str:
    return hypothesis if isinstance(hypothesis, str) else hypothesis.text


def unique_texts(lists: Sequence[HypothesisList]) -> list[str]:
    """Every distinct hypothesis text, first occurrence first: duplicates are scored once
    (n-best lists repeat strings that differ only in their alignment or segmentation)."""
    return list(dict.fromkeys(text_of(h) for lst in lists for h in lst.hypotheses))


class HypothesisList(_Request):
    id: ListId | None = Field(default=None, description="Echoed back, to match lists up.")
    hypotheses: list[HypothesisItem] = Field(
        min_length=1, description='An empty recogniser output is the hypothesis "".')


class RerankRequest(_Request):
    """Exactly one of ``hypotheses`` (one n-best list) or ``lists`` (several)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"hypotheses": ["i scream for ice cream",
                        {"text": "eye scream four ice cream", "score": -0.5}]},
        {"lists": [{"id": "utt-1", "hypotheses": ["the cat sat", "the cat sad", ""]},
                   {"id": "utt-2", "hypotheses": ["a dog ran", "a dog run"]}],
         "lm_weight": 0.3, "length_bonus": 0.1, "rank_prior": "log"}]})

    hypotheses: list[HypothesisItem] | None = Field(default=None, min_length=1)
    lists: list[HypothesisList] | None = Field(default=None, min_length=1)
    lm_weight: FiniteFloat | None = Field(
        default=None, ge=0.0, le=MAX_LM_WEIGHT,
        description="Weight of the Electric score; default from the manifest.")
    length_bonus: FiniteFloat | None = Field(
        default=None, ge=-MAX_LENGTH_BONUS, le=MAX_LENGTH_BONUS,
        description="Added per token; default from the manifest.")
    rank_prior: RankPrior | None = Field(
        default=None,
        description="Base scores for a list where no hypothesis has a score (plain strings, "
                    "or objects without 'score'), i.e. a recogniser's n-best order without its "
                    "scores: none 0, linear -rank, log -ln(1 + rank), rank from 0. Default: "
                    "the manifest's rerank.rank_prior (GET /v1/model), the prior its default "
                    "weights were fitted with.")
    truncate: bool = False

    @model_validator(mode="after")
    def _one_form(self) -> RerankRequest:
        if (self.hypotheses is None) == (self.lists is None):
            raise ValueError("send exactly one of 'hypotheses' (one list) or 'lists'")
        return self

    def all_lists(self) -> list[HypothesisList]:
        if self.lists is not None:
            return self.lists
        return [HypothesisList(hypotheses=self.hypotheses or [])]

    def where(self, text: str) -> str:
        """Where ``text`` first occurs, as the client wrote it: ``lists[2].hypotheses[0]``."""
        for i, lst in enumerate(self.all_lists()):
            for j, hyp in enumerate(lst.hypotheses):
                if text_of(hyp) == text:
                    return f"hypotheses[{j}]" if self.lists is None else f"lists[{i}].hypotheses[{j}]"
        return "a hypothesis"


class SentenceScore(BaseModel):
    score: float = Field(description="-sum of the token energies; higher is better.")
    num_tokens: int = Field(description="Scored tokens ([CLS], [SEP] excluded).")
    tokens: list[str]
    energies: list[float] = Field(description="One per token; lower fits its context better.")
    offsets: list[tuple[int, int]] = Field(
        description="[start, end) character span of each token in the input string.")
    truncated: bool

    @classmethod
    def of(cls, scored: Scored) -> SentenceScore:
        return cls(score=scored.score, num_tokens=scored.num_tokens, tokens=scored.tokens,
                   energies=scored.energies, offsets=scored.offsets, truncated=scored.truncated)


class ScoreResponse(BaseModel):
    model: str
    results: list[SentenceScore]


class TokenizedSentence(BaseModel):
    tokens: list[str]
    ids: list[int]
    offsets: list[tuple[int, int]]
    num_tokens: int
    truncated: bool


class TokenizeResponse(BaseModel):
    model: str
    max_tokens: int = Field(description="Most tokens per sentence the model scores.")
    results: list[TokenizedSentence]


class RankedHypothesis(BaseModel):
    index: int = Field(description="Position in the request's list.")
    text: str
    score: float = Field(description="Electric score, -sum of energies.")
    base_score: float
    combined: float = Field(
        description="base_score + lm_weight * score + length_bonus * num_tokens.")
    num_tokens: int

    @classmethod
    def of(cls, ranked: Ranked) -> RankedHypothesis:
        return cls(index=ranked.index, text=ranked.text, score=ranked.score,
                   base_score=ranked.base_score, combined=ranked.combined,
                   num_tokens=ranked.num_tokens)


class RankedList(BaseModel):
    id: str | int | None = None
    hypotheses: list[RankedHypothesis]


class RerankResponse(BaseModel):
    model: str
    lm_weight: float
    length_bonus: float
    rank_prior: RankPrior = Field(
        description="The prior in force for lists without scores: the request's, else the "
                    "manifest's.")
    hypotheses: list[RankedHypothesis] | None = Field(
        default=None, description="Present when the request sent one list.")
    lists: list[RankedList] | None = Field(
        default=None, description="Present when the request sent 'lists'.")


class ModelInfo(BaseModel):
    manifest: dict[str, Any]
    variant: str
    provider: str = Field(description="The execution provider running the model.")
    providers: list[str]
    max_tokens: int
    batching: dict[str, float] = Field(
        description="Batching limits in force (device defaults resolved).")
    request_limits: dict[str, Any] = Field(
        default_factory=dict,
        description="What one request may ask beyond the schema: max_request_tokens (positions "
                    "with [CLS]/[SEP]; null = no limit) and where it comes from (by default "
                    "the engine throughput measured at warm-up x half the deadline), "
                    "max_sentence_chars, positions_per_s. Empty until warmed up.")
    ready: bool


class Status(BaseModel):
    status: str


class ErrorDetail(BaseModel):
    type: str = Field(description="Stable machine-readable name, e.g. invalid_input.")
    message: str = Field(description="What was refused, with the value and the limit.")


class ErrorBody(BaseModel):
    """The one shape of every refusal."""

    error: ErrorDetail


# -- POST /rerank: the bodies text-embeddings-inference and Cohere clients send ----------------

MAX_TOP_N = 1 << 20


def _raw_only(value: bool | None) -> bool | None:
    if value is False:
        raise PydanticCustomError(
            "raw_scores_only", "raw_scores false asks for a probability in [0, 1], which an "
                               "energy model does not give; scores here are -sum of energies "
                               "(unbounded, higher is better): send true or leave it out")
    return value


class _CompatRerank(_Request):
    query: Text = Field(
        description="Prepended to each text (with a space) as context; only the text's tokens "
                    'are scored. "" scores each text alone, as /v1/score does.')
    top_n: int | None = Field(default=None, ge=1, le=MAX_TOP_N,
                              description="Return only the best top_n results.")
    truncate: bool = Field(
        default=False, description="Cut query + text at the model's limit instead of refusing "
                                   "it (422); the text's tail is what is cut.")


class TeiRerankRequest(_CompatRerank):
    """text-embeddings-inference's form: ``texts``; the answer is a bare list."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"query": "the cat", "texts": ["sat on the mat", "sat on the hat", "mat the on sat"],
         "return_text": True}]})

    texts: list[Text] = Field(min_length=1, description="The candidates to rank.")
    return_text: bool = Field(default=False, description="Echo each text in its result.")
    raw_scores: Annotated[bool | None, AfterValidator(_raw_only)] = Field(
        default=None, description="Accepted for TEI clients; only true (scores are always raw).")


class CohereDocument(_Request):
    text: Text


DocumentItem = Annotated[
    Annotated[Text, Tag("string-form")] | Annotated[CohereDocument, Tag("object-form")],
    Discriminator(_form, custom_error_type="document_type",
                  custom_error_message='a document is a string or an object {"text": ...}')]


class CohereRerankRequest(_CompatRerank):
    """Cohere's form: ``documents``; the answer is ``{"results": [...]}``."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"query": "the cat", "documents": ["sat on the mat", {"text": "mat the on sat"}],
         "top_n": 1, "return_documents": True}]})

    documents: list[DocumentItem] = Field(min_length=1, description="The candidates to rank.")
    return_documents: bool = Field(default=False,
                                   description="Echo each document in its result.")
    model: str | None = Field(default=None, max_length=MAX_ID_CHARS,
                              description="Accepted for Cohere clients and ignored: the "
                                          "service serves one model (GET /v1/model).")

    def document_texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


def _compat_form(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "tei-form" if isinstance(value, TeiRerankRequest) else (
            "cohere-form" if isinstance(value, CohereRerankRequest) else None)
    if ("texts" in value) == ("documents" in value):
        return None
    return "tei-form" if "texts" in value else "cohere-form"


CompatRerankRequest = Annotated[
    Annotated[TeiRerankRequest, Tag("tei-form")]
    | Annotated[CohereRerankRequest, Tag("cohere-form")],
    Discriminator(_compat_form, custom_error_type="rerank_form",
                  custom_error_message="a /rerank body is an object with exactly one of 'texts' "
                                       "(text-embeddings-inference's form) or 'documents' "
                                       "(Cohere's)")]


class TeiRank(BaseModel):
    index: int = Field(description="Position in the request's texts.")
    score: float = Field(description="-sum of the text's token energies given the query; "
                                     "unbounded, higher is better.")
    text: str | None = Field(default=None, description="With return_text.")


class CohereResultDocument(BaseModel):
    text: str


class CohereResult(BaseModel):
    index: int = Field(description="Position in the request's documents.")
    relevance_score: float = Field(
        description="-sum of the document's token energies given the query: how well it reads "
                    "after the query, unbounded (not a probability), higher is better.")
    document: CohereResultDocument | None = Field(default=None,
                                                  description="With return_documents.")


class CohereRerankResponse(BaseModel):
    id: str = Field(description="The request id (the X-Request-ID response header).")
    model: str
    results: list[CohereResult]
