"""``POST /rerank`` in the shapes that text-embeddings-inference and Cohere clients send.

Users of TEI, Infinity or Cohere re-rank with ``{"query", "texts"}`` or ``{"query",
"documents"}``; /v1/rerank wants n-best lists. This route takes their bodies and answers in
their shapes, with what an energy model can say about a candidate: not relevance, which it
has no notion of, but how plausible the candidate reads *after the query*. Each candidate is
scored as ``query + " " + text`` and only the text's tokens count (picked by their character
offsets), so the query conditions the text's energies without its own energies counting; an
empty query scores each text alone, exactly as /v1/score does. The score is ``-Σ E`` over the
text's tokens: unbounded, higher is better, not a probability, and it falls with length (every
token adds an energy), so candidates of very different lengths are not on equal terms.

Which form answers is decided by the body (service/schemas.py ``CompatRerankRequest``):
``texts`` is TEI's and gets a bare list ``[{"index", "score", "text"?}]``; ``documents`` is
Cohere's and gets ``{"id", "model", "results": [{"index", "relevance_score", "document"?}]}``.
Both are sorted best first (ties keep the request's order) and cut to ``top_n``.

Admission, the API key, tokenization, batching and the limits are /v1's (service/app.py); the
candidate count is held to ``max_hypotheses``, as /v1/rerank's is.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Body, Request

from service.deps import REFUSALS, AuthorizedDep, check_count
from service.disconnect import client_of
from service.errors import InvalidInput
from service.schemas import (
    CohereRerankRequest,
    CohereRerankResponse,
    CohereResult,
    CohereResultDocument,
    CompatRerankRequest,
    TeiRank,
    TeiRerankRequest,
)
from service.scoring import Scored
from service.tokenization import Encoded

compat = APIRouter(responses=REFUSALS)


def joined(query: str, text: str) -> str:
    """What the model reads for one candidate: the text alone when there is no query."""
    return f"{query} {text}" if query else text


def in_text(offsets: Sequence[tuple[int, int]], query: str) -> list[bool]:
    """Which tokens of :func:`joined` belong to the text: those starting at or after the end
    of the query (a tokenizer that glues the space to the next word starts it at the space)."""
    start = len(query)
    return [a >= start for a, _ in offsets] if query else [True] * len(offsets)


def text_score(scored: Scored, query: str) -> float:
    """-Σ E over the text's tokens; with no query, the /v1/score score itself."""
    if not query:
        return scored.score
    mask = in_text(scored.offsets, query)
    kept = np.asarray(scored.energies, dtype=np.float64)[np.asarray(mask, dtype=np.bool_)]
    return 0.0 - float(kept.sum())  # 0.0 - x: an empty text scores 0.0, not -0.0


def _no_room(encoded: Sequence[Encoded], texts: Sequence[str], query: str) -> int | None:
    """The first text that truncation left none of its tokens (the query filled the model):
    it would score 0 and rank by nothing but the query's length."""
    for i, e in enumerate(encoded):
        if e.truncated and texts[i].strip() and not any(in_text(e.offsets, query)):
            return i
    return None


def _candidates(body: TeiRerankRequest | CohereRerankRequest) -> tuple[str, list[str]]:
    if isinstance(body, TeiRerankRequest):
        return "texts", body.texts
    return "documents", body.document_texts()


@compat.post("/rerank", response_model_exclude_none=True)
async def rerank(body: Annotated[CompatRerankRequest, Body()], request: Request,
                 host: AuthorizedDep) -> list[TeiRank] | CohereRerankResponse:
    """Rank texts by how well each reads after the query (TEI and Cohere request shapes).

    The score of a text is -sum of the energies of its tokens in ``query + " " + text`` (the
    query's tokens do not count; an empty query scores the text alone, as /v1/score does):
    unbounded, higher is better, not a probability. A body with ``texts`` gets TEI's answer
    (a list of ``{"index", "score", "text"?}``), one with ``documents`` Cohere's
    (``{"id", "model", "results": [{"index", "relevance_score", "document"?}]}``).
    """
    field, texts = _candidates(body)
    check_count(len(texts), host.max_hypotheses, field)
    unique = list(dict.fromkeys(texts))  # a text sent twice is scored once

    def place(i: int) -> str:  # where unique[i] first is in the request, as the client wrote it
        where = f"{field}[{texts.index(unique[i])}]"
        return f"the query with {where}" if body.query else where

    def room_left(encoded: list[Encoded]) -> None:
        empty = _no_room(encoded, unique, body.query)
        if empty is not None:
            raise InvalidInput(
                f"the query fills all {host.max_tokens} tokens the model scores: "
                f"truncating leaves none of {field}[{texts.index(unique[empty])}]; send a "
                "shorter query")

    scored = await host.infer([joined(body.query, t) for t in unique], body.truncate,
                              client_of(request.scope, request.receive), place, room_left)
    by_text = {t: text_score(s, body.query) for t, s in zip(unique, scored)}
    scores = [by_text[t] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -scores[i])[:body.top_n]
    if isinstance(body, TeiRerankRequest):
        return [TeiRank(index=i, score=scores[i], text=texts[i] if body.return_text else None)
                for i in order]
    request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
    return CohereRerankResponse(id=request_id, model=host.model_name, results=[
        CohereResult(index=i, relevance_score=scores[i],
                     document=CohereResultDocument(text=texts[i]) if body.return_documents
                     else None)
        for i in order])
