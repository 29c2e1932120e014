"""Training data: text corpora -> token ids -> packed sequences -> seeded, resumable batches.

Corpus format: UTF-8 text, optionally gzipped; one sentence or paragraph per line; a blank line
ends a document. Paragraph lines are split into sentences before tokenizing (``split_sentences``):
packing never cuts a sentence, so a whole paragraph longer than a sequence would otherwise lose
everything past its first ``max_len`` tokens. Shapes: B batch, T sequence (specials included), N tokens, S sentences,
D documents.

Tokenized corpora are cached as flat arrays in one ``.npz`` file (no pickle): the token ids of
every sentence back to back, the offsets where sentences start, and where documents start.
Consecutive sentences of a document are therefore contiguous, and a packed sequence is a plain
``[start, end)`` slice of the token array.

Speech form: ASR n-best lists, the service's main input, are lower-case words without
punctuation, while most training text is edited prose. ``plain_fraction`` of the documents
(chosen by a hash of their text, like the held-out ones) are trained in that form instead, so
the energy model sees unpunctuated sentences too. (On the Common Voice lists it did not change
re-ranking; docs/TRAINING.md.)
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from model_export.corpus import read_documents

# Bump when the cache layout or the tokenization rules change, so old caches are rebuilt.
CACHE_FORMAT = 2


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the tokens that frame and pad a sequence; they are never noised or scored."""

    cls: int
    sep: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> SpecialIds:
        names = ("[CLS]", "[SEP]", "[PAD]")
        ids = {name: i for name in names if (i := tokenizer.token_to_id(name)) is not None}
        missing = [name for name in names if name not in ids]
        if missing:
            raise ValueError(f"tokenizer has no {missing} token; a BERT-style vocabulary is needed")
        return cls(cls=ids["[CLS]"], sep=ids["[SEP]"], pad=ids["[PAD]"])


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer.json with padding and truncation off: packing decides lengths, not it."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _hash_fraction(lines: list[str], salt: bytes) -> float:
    digest = hashlib.blake2b("\n".join(lines).encode("utf-8"), digest_size=8, salt=salt).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def is_heldout(lines: list[str], fraction: float) -> bool:
    """Held out by a hash of the document's text: stable across runs, machines and file order,
    and duplicates of a document land on the same side, so nothing leaks into the held-out set."""
    return _hash_fraction(lines, b"") < fraction


def in_speech_form(lines: list[str], fraction: float) -> bool:
    """Whether a document is trained in speech form; a hash independent of ``is_heldout``'s."""
    return _hash_fraction(lines, b"speech") < fraction


# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before white
# space and an upper-case letter, digit or opening quote. Abbreviations ("Mr. Smith") split too;
# that costs nothing, because packing joins consecutive sentences of a document again.
_SENTENCE_END = re.compile(r"""(?<=[.!?])(?:["')\]\u201d\u2019]*)\s+(?=["'(\[\u201c\u2018]?[A-Z0-9])""")


def split_sentences(line: str) -> list[str]:
    """A paragraph line as its sentences; a line with one sentence comes back whole."""
    pieces, begin = [], 0
    for match in _SENTENCE_END.finditer(line):
        pieces.append(line[begin:match.start() + len(match.group(0).rstrip())].strip())
        begin = match.end()
    pieces.append(line[begin:].strip())
    return [p for p in pieces if p]


_APOSTROPHES = re.compile(r"(?<=\w)['\u2019](?=\w)")
_SPACES = re.compile(r"\s+")


def speech_form(line: str) -> str:
    """A line as ASR output writes it: lower case, no punctuation or symbols, apostrophes
    closed up (``don't`` -> ``dont``, as the Common Voice n-best lists have it); hyphens
    inside words and digits are kept."""
    text = _APOSTROPHES.sub("", line.lower())
    chars = [c if c == "-" or not unicodedata.category(c).startswith(("P", "S")) else " "
             for c in text]
    words = [w.strip("-") for w in _SPACES.split("".join(chars))]
    return " ".join(w for w in words if w)


@dataclass(frozen=True)
class TokenizedCorpus:
    tokens: np.ndarray  # (N,) int32 ids of every sentence back to back, no specials
    sentence_starts: np.ndarray  # (S+1,) int64 offsets into tokens
    document_starts: np.ndarray  # (D+1,) int64 offsets into sentences
    heldout: np.ndarray  # (D,) bool, the document is held out for cloze evaluation
    source: np.ndarray  # (D,) int16, index of the corpus file the document came from

    @property
    def num_documents(self) -> int:
        return len(self.heldout)


def tokenize_corpora(corpora: list[Path], tokenizer: Tokenizer, heldout_fraction: float,
                     plain_fraction: float = 0.0) -> TokenizedCorpus:
    """``plain_fraction`` of the documents are tokenized in ``speech_form``."""
    chunks: list[np.ndarray] = []
    sentence_lengths: list[np.ndarray] = []
    doc_sizes: list[int] = []
    heldout: list[bool] = []
    source: list[int] = []
    for index, path in enumerate(corpora):
        documents = [[sentence for line in doc for sentence in split_sentences(line)]
                     for doc in read_documents(path)]
        # One hash per document, not per line: a book is one document of thousands of lines.
        spoken = [plain_fraction > 0 and in_speech_form(doc, plain_fraction) for doc in documents]
        lines = [speech_form(line) if speak else line
                 for doc, speak in zip(documents, spoken) for line in doc]
        # One batched call per file: the Rust side runs it on every core.
        encodings = tokenizer.encode_batch(lines, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(lines))
        chunks.append(np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32,
                                  count=int(lengths.sum())))
        line = 0
        for doc in documents:
            doc_lengths = lengths[line:line + len(doc)]
            line += len(doc)
            doc_lengths = doc_lengths[doc_lengths > 0]  # lines the normalizer empties
            if len(doc_lengths):
                sentence_lengths.append(doc_lengths)
                doc_sizes.append(len(doc_lengths))
                heldout.append(is_heldout(doc, heldout_fraction))
                source.append(index)
    all_lengths = np.concatenate(sentence_lengths) if sentence_lengths else np.zeros(0, np.int64)
    return TokenizedCorpus(
        tokens=np.concatenate(chunks) if chunks else np.zeros(0, np.int32),
        sentence_starts=np.concatenate([[0], np.cumsum(all_lengths)]).astype(np.int64),
        document_starts=np.concatenate([[0], np.cumsum(doc_sizes, dtype=np.int64)]).astype(np.int64),
        heldout=np.asarray(heldout, dtype=bool), source=np.asarray(source, dtype=np.int16))


def _cache_key(corpora: list[Path], tokenizer_path: Path, heldout_fraction: float,
               plain_fraction: float) -> str:
    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    return json.dumps({
        "format": CACHE_FORMAT,
        "tokenizer": sha256(tokenizer_path),
        "corpora": [[p.name, sha256(p)] for p in corpora],
        "heldout_fraction": heldout_fraction,
        # Absent when 0, so caches written before speech form existed stay valid.
        **({"plain_fraction": plain_fraction} if plain_fraction else {}),
    }, sort_keys=True)


def load_or_tokenize(corpora: list[Path], tokenizer_path: Path, cache_path: Path,
                     heldout_fraction: float, plain_fraction: float = 0.0) -> TokenizedCorpus:
    """Tokenize the corpora, or reuse ``cache_path`` when it was made from the same bytes and
    settings."""
    key = _cache_key(corpora, tokenizer_path, heldout_fraction, plain_fraction)
    if cache_path.exists():
        with np.load(cache_path, allow_pickle=False) as cached:
            if str(cached["key"]) == key:
                return TokenizedCorpus(tokens=cached["tokens"],
                                       sentence_starts=cached["sentence_starts"],
                                       document_starts=cached["document_starts"],
                                       heldout=cached["heldout"], source=cached["source"])
    corpus = tokenize_corpora(corpora, load_tokenizer(tokenizer_path), heldout_fraction,
                              plain_fraction)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(cache_path.name + ".tmp.npz")
    np.savez(tmp, key=np.array(key), tokens=corpus.tokens, sentence_starts=corpus.sentence_starts,
             document_starts=corpus.document_starts, heldout=corpus.heldout, source=corpus.source)
    tmp.replace(cache_path)
    return corpus


@dataclass(frozen=True)
class PackedSequences:
    """Token ranges ``tokens[start:end]``, each to be framed as [CLS] ... [SEP]."""

    tokens: np.ndarray  # (N,) int32, shared with the TokenizedCorpus
    starts: np.ndarray  # (M,) int64
    ends: np.ndarray  # (M,) int64
    heldout: np.ndarray  # (M,) bool, from the sequence's document
    source: np.ndarray  # (M,) int16, the corpus file of the sequence's document

    def __len__(self) -> int:
        return len(self.starts)

    def subset(self, heldout: bool) -> PackedSequences:
        keep = self.heldout == heldout
        return PackedSequences(self.tokens, self.starts[keep], self.ends[keep], self.heldout[keep],
                               self.source[keep])

    def sequence(self, i: int, special: SpecialIds) -> np.ndarray:
        """One framed sequence, (T,) int64."""
        body = self.tokens[self.starts[i]:self.ends[i]]
        return np.concatenate([[special.cls], body, [special.sep]]).astype(np.int64)


def pack(corpus: TokenizedCorpus, max_len: int) -> PackedSequences:
    """Greedily pack consecutive sentences of a document into sequences of at most ``max_len``
    tokens, [CLS] and [SEP] included. A sentence is never split across sequences and a sequence
    never crosses a document boundary; a sentence longer than ``max_len - 2`` on its own is
    truncated to that length (its tail is dropped)."""
    room = max_len - 2
    if room < 1:
        raise ValueError(f"max_len {max_len} leaves no room between [CLS] and [SEP]")
    sent = corpus.sentence_starts.tolist()
    docs = corpus.document_starts.tolist()
    starts: list[int] = []
    ends: list[int] = []
    heldout: list[bool] = []
    doc_of_sequence: list[int] = []

    def close(begin: int, end: int, held: bool) -> None:
        starts.append(begin)
        ends.append(end)
        heldout.append(held)

    for d in range(corpus.num_documents):
        held = bool(corpus.heldout[d])
        first = len(starts)
        begin = end = sent[docs[d]]  # the open sequence is tokens[begin:end]
        for s in range(docs[d], docs[d + 1]):
            a, b = sent[s], sent[s + 1]
            if b - begin <= room:
                end = b
                continue
            if end > begin:
                close(begin, end, held)
            if b - a > room:
                close(a, a + room, held)
                begin = end = b
            else:
                begin, end = a, b
        if end > begin:
            close(begin, end, held)
        doc_of_sequence.extend([d] * (len(starts) - first))
    return PackedSequences(corpus.tokens, np.asarray(starts, np.int64), np.asarray(ends, np.int64),
                           np.asarray(heldout, bool),
                           corpus.source[np.asarray(doc_of_sequence, np.int64)].astype(np.int16))


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) int64, right padded
    attention_mask: torch.Tensor  # (B, T) int64, 1 on real tokens (specials included)
    special_mask: torch.Tensor  # (B, T) bool, True on [CLS], [SEP] and padding: never noised

    @property
    def real_tokens(self) -> int:
        """Non-padding tokens, [CLS] and [SEP] included: what tokens/s counts."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.special_mask.to(device))


def collate(sequences: list[np.ndarray], special: SpecialIds) -> Batch:
    """Framed (T_i,) sequences -> a batch padded to its longest sequence."""
    B, T = len(sequences), max(len(s) for s in sequences)
    ids = np.full((B, T), special.pad, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    specials = (ids == special.cls) | (ids == special.sep) | (mask == 0)
    return Batch(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(specials))


class BatchStream:
    """Batches in a seeded order that is a pure function of (seed, step).

    Epoch ``e`` draws ``default_rng([seed, e])``: it permutes the sequences, sorts each run of
    ``bucket`` batches' worth by length, cuts the runs into batches and shuffles the batches.
    Neighbours in length share a batch, so padding to the batch's longest sequence wastes
    little compute, while the batch order stays random. The ``len % batch_size`` sequences
    left over by an epoch's permutation sit that epoch out (a different few each epoch).
    Resuming at step ``s`` needs nothing but ``s``: no iterator state to checkpoint.

    ``weights`` (one per corpus file, by ``sequences.source``) mixes the corpora: an epoch holds
    every sequence of a corpus of weight w ``floor(w)`` times, plus a fresh draw (without
    replacement) of ``round(frac(w) * n)`` of its n sequences, so the epoch's length is fixed
    and a weight below 1 subsamples a large corpus differently each epoch.
    """

    def __init__(self, sequences: PackedSequences, special: SpecialIds, batch_size: int,
                 seed: int, bucket: int = 50, weights: list[float] | None = None):
        if len(sequences) == 0:
            raise ValueError("no training sequences: the corpora are empty or all held out")
        self.sequences = sequences
        self.special = special
        self.seed = seed
        self.bucket = bucket
        self._members: list[tuple[np.ndarray, int, int]] = []  # (indices, whole copies, extra)
        if weights is not None:
            for source, weight in enumerate(weights):
                if weight < 0:
                    raise ValueError(f"corpus weight {weight} of corpus {source} is negative")
                members = np.flatnonzero(sequences.source == source)
                whole = int(weight)
                self._members.append((members, whole, round((weight - whole) * len(members))))
        size = (sum(len(m) * whole + extra for m, whole, extra in self._members)
                if weights is not None else len(sequences))
        if size == 0:
            raise ValueError("no training sequences: every corpus with sequences has weight 0")
        self.batch_size = min(batch_size, size)
        self.batches_per_epoch = size // self.batch_size
        self._epoch = -1
        self._batches: list[np.ndarray] = []

    def _pool(self, rng: np.random.Generator) -> np.ndarray:
        """Sequence indices of one weighted epoch, before shuffling."""
        parts = [np.tile(members, whole) for members, whole, _ in self._members]
        parts += [rng.choice(members, extra, replace=False)
                  for members, _, extra in self._members if extra]
        return np.concatenate(parts)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The sequence indices of every batch of ``epoch``, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        B = self.batch_size
        population = self._pool(rng) if self._members else len(self.sequences)
        order = rng.permutation(population)[:self.batches_per_epoch * B]
        lengths = (self.sequences.ends - self.sequences.starts)[order]
        batches: list[np.ndarray] = []
        for lo in range(0, len(order), self.bucket * B):
            run = order[lo:lo + self.bucket * B]
            run = run[np.argsort(lengths[lo:lo + self.bucket * B], kind="stable")]
            batches.extend(run[i:i + B] for i in range(0, len(run), B))
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, step: int) -> Batch:
        epoch, index = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._batches = self.epoch_batches(epoch)
            self._epoch = epoch
        rows = [self.sequences.sequence(int(i), self.special) for i in self._batches[index]]
        return collate(rows, self.special)

    def __call__(self, start_step: int = 0) -> Iterator[Batch]:
        step = start_step
        while True:
            yield self.batch(step)
            step += 1
