"""Text -> model inputs, with the character offsets and special-token flags a response needs.

Wraps a Hugging Face ``tokenizers`` file. Offsets come from the tokenizer's alignment tracking,
so they index the ORIGINAL string (before lowercasing and accent stripping). Calls here block
(they run Rust code over whole batches); the service calls them from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Encoding, Tokenizer

from service.errors import InvalidInput


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


class TooLong(InvalidInput):
    """A text has more tokens than the model takes and the request did not ask to truncate."""

    def __init__(self, index: int, num_tokens: int, max_tokens: int, field: str = "sentences"):
        self.index, self.num_tokens, self.max_tokens = index, num_tokens, max_tokens
        super().__init__(
            f"{field}[{index}] has {num_tokens} tokens, the model scores at most {max_tokens}; "
            'send "truncate": true to cut it')

    def at(self, where: str) -> InvalidInput:
        """The same refusal naming the text's place in the request, e.g. ``lists[2].hypotheses[0]``."""
        return InvalidInput(
            f"{where} has {self.num_tokens} tokens, the model scores at most {self.max_tokens}; "
            'send "truncate": true to cut it')


class SentenceTokenizer:
    def __init__(self, tokenizer: Tokenizer, max_length: int):
        """``max_length``: the model's max_positions, special tokens included."""
        tokenizer.no_padding()
        tokenizer.no_truncation()
        # A client's literal "[SEP]" or "[PAD]" is text, not a control token: split it like any
        # other word so it cannot change the model's input structure.
        tokenizer.encode_special_tokens = True
        self._tok = tokenizer
        self.max_length = max_length
        self._n_special = tokenizer.num_special_tokens_to_add(False)
        if max_length <= self._n_special:
            raise ValueError(f"max_length {max_length} leaves no room beside the special tokens")

    @classmethod
    def from_file(cls, path: Path, max_length: int) -> SentenceTokenizer:
        return cls(Tokenizer.from_file(str(path)), max_length)

    @property
    def max_tokens(self) -> int:
        """Most scored tokens one sentence may have."""
        return self.max_length - self._n_special

    def encode(self, texts: Sequence[str], truncate: bool,
               field: str = "sentences") -> list[Encoded]:
        """Encode a batch; over-long texts are cut when ``truncate`` else raise :class:`TooLong`."""
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=True)
        out = []
        for i, enc in enumerate(encodings):
            truncated = len(enc.ids) > self.max_length
            if truncated:
                if not truncate:
                    raise TooLong(i, len(enc.ids) - self._n_special, self.max_tokens, field)
                enc = self._truncated(texts[i])
            out.append(self._encoded(enc, truncated))
        return out

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
