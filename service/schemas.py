"""Request and response bodies of the HTTP API (v1).

Shape rules (types, non-empty text, finite numbers) live here and give 422. Size limits that
depend on the deployment (sentences per request, hypotheses per request) come from Settings and
give 413; the handlers check them on admission.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat, model_validator
from pydantic_core import PydanticCustomError


class _Request(BaseModel):
    # A misspelt field ("sentence", "lmweight") is an error, not a silent default.
    model_config = ConfigDict(extra="forbid")


def _not_blank(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError(
            "blank_text", "empty or whitespace-only text; /v1/score needs at least one token "
            "(an empty hypothesis is valid in /v1/rerank)")
    return text


NonBlank = Annotated[str, AfterValidator(_not_blank)]


class ScoreRequest(_Request):
    sentences: list[NonBlank] = Field(min_length=1, description="Texts to score.")
    truncate: bool = Field(
        default=False,
        description="Cut sentences longer than the model takes instead of refusing them (422).")


class TokenizeRequest(_Request):
    sentences: list[str] = Field(min_length=1)
    truncate: bool = Field(default=False, description="Show the tokens the model would see.")


class Hypothesis(_Request):
    text: str
    score: FiniteFloat = Field(
        default=0.0, description="The recogniser's or translator's own log-domain score.")


class HypothesisList(_Request):
    id: str | int | None = Field(default=None, description="Echoed back, to match lists up.")
    hypotheses: list[str | Hypothesis]


class RerankRequest(_Request):
    """Exactly one of ``hypotheses`` (one n-best list) or ``lists`` (several)."""

    hypotheses: list[str | Hypothesis] | None = None
    lists: list[HypothesisList] | None = Field(default=None, min_length=1)
    lm_weight: FiniteFloat | None = Field(
        default=None, description="Weight of the Electric score; default from the manifest.")
    length_bonus: FiniteFloat | None = Field(
        default=None, description="Added per token; default from the manifest.")
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
                if (hyp if isinstance(hyp, str) else hyp.text) == text:
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


class RankedList(BaseModel):
    id: str | int | None = None
    hypotheses: list[RankedHypothesis]


class RerankResponse(BaseModel):
    model: str
    lm_weight: float
    length_bonus: float
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
    ready: bool


class Status(BaseModel):
    status: str


class ErrorDetail(BaseModel):
    type: str = Field(description="Stable machine-readable name, e.g. invalid_input.")
    message: str = Field(description="What was refused, with the value and the limit.")


class ErrorBody(BaseModel):
    """The one shape of every refusal."""

    error: ErrorDetail
