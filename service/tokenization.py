"""Text -> model inputs, with the character offsets and special-token flags a response needs.

Wraps a Hugging Face ``tokenizers`` file. Offsets come from the tokenizer's alignment tracking,
so they index the ORIGINAL string (before lowercasing and accent stripping). Printable-ASCII
texts take a plain-Python path that gives the same ids, tokens and offsets at a third of the
cost (service/wordpiece.py). Calls here block; the service makes small ones on the event loop
and large ones in a worker thread (service/model_host.py).

Memory is the limit that matters here: the tokenizer holds about 600 bytes per token while it
works (one million "!" took 600 MiB), so texts are bounded in characters BEFORE they reach it
(``max_chars``) and a request is tokenized in chunks of at most ``CHUNK_CHARS`` characters, each
turned into compact :class:`Encoded` rows before the next starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Encoding, Tokenizer

from service.wordpiece import AsciiWordPiece

# Characters tokenized in one call; at ~600 bytes per token at worst (one token per character)
# a chunk holds ~40 MiB at its peak, whatever the size of the request.
CHUNK_CHARS = 1 << 16
# Default ``max_chars`` per scored token the model takes. English averages 4-5 characters per
# WordPiece token, so a text this long has far more tokens than the model scores unless it is
# mostly spaces or 100-letter words.
CHARS_PER_TOKEN = 32


@dataclass(frozen=True, slots=True)
class Encoded:
    """One sentence, ready for the engine and for the response."""

    ids: NDArray[np.int64]
    """(T,) the model's input, special tokens included."""
    scored: NDArray[np.bool_]
    """(T,) True where a position gets an energy in responses; False for [CLS], [SEP]."""
    tokens: list[str]
    """The scored tokens, in order."""
    offsets: list[tuple[int, int]]
    """[start, end) character span of each scored token in the input string."""
    truncated: bool

    @property
    def length(self) -> int:
        """Positions the engine runs, specials included: the sequence's batching cost."""
        return int(self.ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


class TooLong(ValueError):
    """A text has more tokens than the model takes and the caller did not ask to truncate.

    It carries the figures and the text's ``index`` in the batch given to
    :meth:`SentenceTokenizer.encode`; a caller that knows where the text sits in its own input
    words the refusal for its users (service/errors.py ``too_long`` for HTTP, service/local.py
    for the CLI).
    """

    def __init__(self, index: int, num_tokens: int, max_tokens: int):
        self.index, self.num_tokens, self.max_tokens = index, num_tokens, max_tokens
        self.message = (f"sentences[{index}] has {num_tokens} tokens, the model scores at most "
                        f"{max_tokens}")
        super().__init__(self.message)


class TooManyChars(TooLong):
    """A text has more characters than are ever tokenized; refused before tokenizing, so it
    has no token count."""

    def __init__(self, index: int, chars: int, max_chars: int):
        self.index, self.chars, self.max_chars = index, chars, max_chars
        self.message = (f"sentences[{index}] has {chars} characters; at most {max_chars} are "
                        "tokenized")
        ValueError.__init__(self, self.message)


class SentenceTokenizer:
    def __init__(self, tokenizer: Tokenizer, max_length: int, max_chars: int | None = None):
        """``max_length``: the model's max_positions, special tokens included. ``max_chars``:
        longest text tokenized (default ``CHARS_PER_TOKEN`` per scored token); a longer one is
        refused, or with ``truncate`` cut to its first ``max_chars`` characters first."""
        tokenizer.no_padding()
        tokenizer.no_truncation()
        # A client's literal "[SEP]" or "[PAD]" is text, not a control token: split it like any
        # other word so it cannot change the model's input structure.
        tokenizer.encode_special_tokens = True
        self._tok = tokenizer
        self._ascii = AsciiWordPiece.of(tokenizer)  # None: every text goes to the tokenizer
        self.max_length = max_length
        self._n_special = tokenizer.num_special_tokens_to_add(False)
        if max_length <= self._n_special:
            raise ValueError(f"max_length {max_length} leaves no room beside the special tokens")
        self.max_chars = max_chars or CHARS_PER_TOKEN * self.max_tokens
        if self.max_chars < 1:
            raise ValueError(f"max_chars {self.max_chars} is not positive")

    @classmethod
    def from_file(cls, path: Path, max_length: int,
                  max_chars: int | None = None) -> SentenceTokenizer:
        return cls(Tokenizer.from_file(str(path)), max_length, max_chars)

    @property
    def max_tokens(self) -> int:
        """Most scored tokens one sentence may have."""
        return self.max_length - self._n_special

    def encode(self, texts: Sequence[str], truncate: bool) -> list[Encoded]:
        """Encode a batch; over-long texts are cut when ``truncate`` else raise :class:`TooLong`
        (too many tokens) or :class:`TooManyChars` (too many characters to tokenize at all)."""
        bounded = [self._bounded(text, i, truncate) for i, text in enumerate(texts)]
        out: list[Encoded | None] = [None] * len(bounded)
        if self._ascii is not None:
            for i, text in enumerate(bounded):
                fast = self._ascii.encode(text, self.max_length)
                if fast is not None:
                    out[i] = _from_pieces(*fast, len(text) < len(texts[i]))
        rest = [i for i, e in enumerate(out) if e is None]
        for start, stop in _chunks([len(bounded[i]) for i in rest], CHUNK_CHARS):
            chunk = rest[start:stop]
            encodings = self._tok.encode_batch([bounded[i] for i in chunk],
                                               add_special_tokens=True)
            for i, enc in zip(chunk, encodings):
                cut = len(bounded[i]) < len(texts[i])
                truncated = len(enc.ids) > self.max_length
                if truncated:
                    if not truncate:
                        raise TooLong(i, len(enc.ids) - self._n_special, self.max_tokens)
                    enc = self._truncated(bounded[i])
                out[i] = self._encoded(enc, truncated or cut)
            del encodings  # the chunk's tokenizer memory goes before the next one is made
        return out  # type: ignore[return-value]  # every slot is filled above

    def _bounded(self, text: str, index: int, truncate: bool) -> str:
        """``text`` if it is at most ``max_chars`` long, else its cut beginning or a refusal.

        The cut falls on whitespace where there is some, so the last word is whole: the
        tokenizer splits on whitespace first, so the cut text's tokens are then the first
        tokens of the whole text, and truncating either gives the same tokens whenever the
        first ``max_chars`` characters hold more tokens than the model scores.
        """
        if len(text) <= self.max_chars:
            return text
        if not truncate:
            raise TooManyChars(index, len(text), self.max_chars)
        head = text[:self.max_chars]
        space = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
        return head[:space] if space > 0 else head

    def _truncated(self, text: str) -> Encoding:
        bare = self._tok.encode(text, add_special_tokens=False)
        bare.truncate(self.max_tokens)
        return self._tok.post_process(bare)

    @staticmethod
    def _encoded(enc: Encoding, truncated: bool) -> Encoded:
        special = enc.special_tokens_mask
        keep = [j for j, s in enumerate(special) if not s]
        tokens, offsets = enc.tokens, enc.offsets
        return Encoded(
            ids=np.asarray(enc.ids, dtype=np.int64),
            scored=np.logical_not(np.asarray(special, dtype=np.bool_)),
            tokens=[tokens[j] for j in keep],
            offsets=[offsets[j] for j in keep],
            truncated=truncated,
        )


def _from_pieces(ids: list[int], tokens: list[str], offsets: list[tuple[int, int]],
                 truncated: bool) -> Encoded:
    """An :class:`Encoded` from ``[CLS]``, the pieces and ``[SEP]`` (service/wordpiece.py)."""
    scored = np.ones(len(ids), dtype=np.bool_)
    scored[0] = scored[-1] = False
    return Encoded(ids=np.array(ids, dtype=np.int64), scored=scored, tokens=tokens,
                   offsets=offsets, truncated=truncated)


def _chunks(sizes: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """[start, stop) runs of consecutive items whose sizes sum to at most ``budget``; an item
    larger than the budget is a run of its own."""
    runs, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > budget:
            runs.append((start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs
