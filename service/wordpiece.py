"""The uncased BERT tokenizer for printable-ASCII text, in plain Python, and why.

A ``tokenizers`` call costs about 60 µs for a 20-word sentence (mostly its normalizer and
pre-tokenizer tracking every character's alignment) and must take the GIL back from the event
loop when it returns. For text made only of printable ASCII characters (U+0020 to U+007E), what
that pipeline does reduces to a few string operations:

- ``BertNormalizer`` (clean_text, Chinese characters, accents, lowercase): nothing to clean,
  no Chinese character and no accent in that range, so only ``str.lower``; no character is
  removed or added, so offsets in the lowered text are offsets in the original.
- ``BertPreTokenizer``: words are runs of letters and digits; every other character but the
  space is ASCII punctuation (BERT's ranges 33-47, 58-64, 91-96, 123-126) and a word of its own.
- ``WordPiece``: greedy longest match first, ``##`` before a piece that continues a word, the
  whole word as the unknown token when a piece is missing or the word is too long.
- The template ``[CLS] $A [SEP]``.

:meth:`AsciiWordPiece.of` builds this only for a tokenizer file that has exactly that pipeline
(and no added token that is not special, since special ones are read as text here), else gives
None and the tokenizer is used as it is. Anything else (other characters, a text the model
cannot take whole) goes to the ``tokenizers`` library too. tests/service/test_wordpiece.py
checks ids, tokens and offsets against it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tokenizers import Tokenizer

_PRINTABLE = re.compile(r"[ -~]*")
_WORDS = re.compile(r"[a-z0-9]+|[^ a-z0-9]")  # on lower-cased printable ASCII

Piece = tuple[int, str, int, int]
"""(id, token, start, end) of one piece, the span relative to its word."""

# Words cached with their pieces: the most a cache holds, and the longest word it keeps (so that
# the cache stays a few MB whatever clients send).
CACHE_WORDS = 1 << 16
CACHE_WORD_CHARS = 32


class AsciiWordPiece:
    def __init__(self, vocab: dict[str, int], unk: str, prefix: str, max_word_chars: int,
                 cls_id: int, sep_id: int):
        self.vocab, self.unk, self.prefix = vocab, unk, prefix
        self.unk_id, self.max_word_chars = vocab[unk], max_word_chars
        self.cls_id, self.sep_id = cls_id, sep_id
        self._cache: dict[str, tuple[Piece, ...]] = {}

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> AsciiWordPiece | None:
        """The fast path for ``tokenizer``, or None if its pipeline is not the one above."""
        spec: dict[str, Any] = json.loads(tokenizer.to_str())
        normalizer, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
        model, post = spec.get("model") or {}, spec.get("post_processor") or {}
        if not (normalizer.get("type") == "BertNormalizer" and normalizer.get("lowercase")
                and normalizer.get("clean_text") and pre.get("type") == "BertPreTokenizer"
                and model.get("type") == "WordPiece"):
            return None
        if any(not t.get("special") for t in spec.get("added_tokens") or []):
            return None  # an added word would be matched before WordPiece
        if not tokenizer.encode_special_tokens and spec.get("added_tokens"):
            return None  # "[SEP]" in a text would be the control token, not text
        template = _cls_sep(post)
        if template is None or model.get("unk_token") not in model.get("vocab", {}):
            return None
        return cls(model["vocab"], model["unk_token"],
                   model.get("continuing_subword_prefix", "##"),
                   int(model.get("max_input_chars_per_word", 100)), *template)

    def encode(self, text: str, max_length: int
               ) -> tuple[list[int], list[str], list[tuple[int, int]]] | None:
        """``[CLS]`` + pieces + ``[SEP]`` ids, the pieces' tokens and offsets; None when
        ``text`` is not printable ASCII or has more than ``max_length`` ids."""
        if not _PRINTABLE.fullmatch(text):
            return None
        ids, tokens, offsets = [self.cls_id], [], []
        cache = self._cache
        for match in _WORDS.finditer(text.lower()):
            word, start = match.group(), match.start()
            pieces = cache.get(word)
            if pieces is None:
                pieces = self._pieces(word)
                if len(word) <= CACHE_WORD_CHARS:
                    if len(cache) >= CACHE_WORDS:
                        cache.clear()
                    cache[word] = pieces
            for piece_id, token, a, b in pieces:
                ids.append(piece_id)
                tokens.append(token)
                offsets.append((start + a, start + b))
        ids.append(self.sep_id)
        if len(ids) > max_length:
            return None
        return ids, tokens, offsets

    def _pieces(self, word: str) -> tuple[Piece, ...]:
        n = len(word)
        if n > self.max_word_chars:
            return ((self.unk_id, self.unk, 0, n),)
        pieces: list[Piece] = []
        start = 0
        while start < n:
            end = n
            while end > start:
                token = word[start:end] if start == 0 else self.prefix + word[start:end]
                piece_id = self.vocab.get(token)
                if piece_id is not None:
                    pieces.append((piece_id, token, start, end))
                    break
                end -= 1
            else:
                return ((self.unk_id, self.unk, 0, n),)
            start = end
        return tuple(pieces)


def _cls_sep(post: dict[str, Any]) -> tuple[int, int] | None:
    """The ids of the two special tokens of a ``[CLS] $A [SEP]`` post-processor, else None."""
    if post.get("type") == "BertProcessing":
        return int(post["cls"][1]), int(post["sep"][1])
    if post.get("type") != "TemplateProcessing":
        return None
    single = post.get("single", [])
    if len(single) != 3 or "Sequence" not in single[1]:
        return None
    first, last = single[0].get("SpecialToken", {}), single[2].get("SpecialToken", {})
    specials = post.get("special_tokens", {})
    ids = []
    for part in (first, last):
        spec = specials.get(part.get("id"))
        if spec is None or len(spec.get("ids", [])) != 1:
            return None
        ids.append(int(spec["ids"][0]))
    return ids[0], ids[1]
