"""A training shard: the packed sequences ``train`` would build from the corpora, in one file.

A GPU machine rented for a short run need not hold the corpora nor spend its time tokenizing
42M words: they are tokenized and packed once, on any machine, exactly as ``train`` does
(data.load_or_tokenize, data.pack, the same held-out hash), and written as ``NAME.npz`` (plain
arrays, deflated, no pickle) with ``NAME.json`` beside it recording where they came from:

    tokens   (N,) uint16  the sequence bodies back to back, no [CLS]/[SEP] (WordPiece ids < 65,536)
    lengths  (M,) uint16  tokens per sequence
    source   (M,) int16   corpus file of the sequence (an index into the JSON's ``corpora``)
    heldout  (M,) bool    from a held-out document: evaluated on, never trained on

Every held-out sequence is kept. ``max_tokens`` caps the file: each corpus keeps a fraction
``min(1, w × s)`` of its training sequences (w its corpus weight, one scale s for all, the
largest that fits), as the prefix of a permutation seeded by ``(seed, corpus index)``, kept in
corpus order. Small up-weighted corpora are therefore kept whole and the large down-weighted ones
are sampled. The weights are then divided by the kept fraction (``weights`` in the JSON), so
a weighted epoch of the shard holds as many sequences of each corpus as an epoch of the corpora.
Without a cap the shard holds exactly what ``train`` packs, and ``train(..., shard=)`` draws
the same batches as from the corpora (tests/model_export/test_shard.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_export.config import TrainConfig, corpus_stem, parse_corpus_weights
from model_export.data import PackedSequences, load_or_tokenize, load_tokenizer, pack

SHARD_FORMAT = 1
# The settings a shard was built with; a run reading it must use the same.
FIXED_KEYS = ("max_len", "heldout_fraction", "plain_fraction")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def corpus_weights(cfg: TrainConfig, corpora: list[Path]) -> list[float] | None:
    """One weight per corpus file from ``cfg.corpus_weights``; None when it is empty."""
    named = parse_corpus_weights(cfg.corpus_weights)
    if not named:
        return None
    stems = [corpus_stem(p.name) for p in corpora]
    unknown = sorted(set(named) - set(stems))
    if unknown:
        raise ValueError(f"corpus_weights names {unknown}, which are not among the corpora {stems}")
    return [named.get(stem, 1.0) for stem in stems]


@dataclass(frozen=True)
class Shard:
    sequences: PackedSequences  # training and held-out sequences, in packing order
    weights: list[float] | None  # per corpus, for BatchStream; None: every sequence once
    meta: dict[str, Any]  # the JSON beside the arrays

    @property
    def corpora(self) -> list[str]:
        return [c["name"] for c in self.meta["corpora"]]


def shard_paths(path: Path) -> tuple[Path, Path]:
    """(arrays, provenance) for ``NAME.npz`` or ``NAME``."""
    base = path.with_suffix("") if path.suffix == ".npz" else path
    return base.with_suffix(".npz"), base.with_suffix(".json")


def _keep_counts(train: PackedSequences, weights: list[float], budget: int, seed: int
                 ) -> list[np.ndarray]:
    """Per corpus, the indices (into ``train``) of the sequences kept under ``budget`` tokens."""
    lengths = train.ends - train.starts
    members = [np.flatnonzero(train.source == c) for c in range(len(weights))]
    orders = [m[np.random.default_rng([seed, c]).permutation(len(m))]
              for c, m in enumerate(members)]
    prefix = [np.concatenate([[0], np.cumsum(lengths[o])]) for o in orders]

    def counts(scale: float) -> list[int]:
        return [round(min(1.0, w * scale) * len(o)) for w, o in zip(weights, orders)]

    def tokens(scale: float) -> int:
        return sum(int(p[k]) for p, k in zip(prefix, counts(scale)))

    positive = [w for w in weights if w > 0]
    hi = 1.0 / min(positive) if positive else 0.0
    if tokens(hi) > budget:  # bisect the largest scale that fits
        lo = 0.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if tokens(mid) <= budget else (lo, mid)
        hi = lo
    return [np.sort(o[:k]) for o, k in zip(orders, counts(hi))]


def build_shard(cfg: TrainConfig, corpora: list[Path], tokenizer_path: Path, out: Path,
                max_tokens: int = 0, seed: int = 0, cache_path: Path | None = None
                ) -> dict[str, Any]:
    """Tokenize and pack ``corpora`` as ``train`` would with ``cfg``; write ``out`` (.npz + .json).

    ``max_tokens`` (0: no cap) bounds the sequence bodies written, held-out ones included.
    Returns the provenance JSON.
    """
    arrays_path, meta_path = shard_paths(out)
    vocab = load_tokenizer(tokenizer_path).get_vocab_size()
    if vocab > np.iinfo(np.uint16).max + 1:
        raise ValueError(f"the tokenizer has {vocab} tokens; a uint16 shard holds at most 65,536")
    cache = cache_path or arrays_path.with_name(arrays_path.stem + ".tokens.npz")
    corpus = load_or_tokenize(corpora, tokenizer_path, cache, cfg.heldout_fraction,
                              cfg.plain_fraction)
    packed = pack(corpus, cfg.max_len)
    named = corpus_weights(cfg, corpora)
    weights = named or [1.0] * len(corpora)
    train_idx = np.flatnonzero(~packed.heldout)
    held_idx = np.flatnonzero(packed.heldout)
    lengths = packed.ends - packed.starts
    train_tokens = int(lengths[train_idx].sum())
    budget = max_tokens - int(lengths[held_idx].sum()) if max_tokens else train_tokens
    if budget <= 0:
        raise ValueError(f"max_tokens {max_tokens} does not cover the "
                         f"{int(lengths[held_idx].sum())} held-out tokens")
    effective: list[float] | None = named
    sampled = budget < train_tokens
    if sampled:
        kept = _keep_counts(packed.subset(False), weights, budget, seed)
        per_corpus = [len(k) for k in kept]
        totals = [int((packed.subset(False).source == c).sum()) for c in range(len(corpora))]
        effective = [w * n / k if k else 0.0 for w, n, k in zip(weights, totals, per_corpus)]
        keep = np.sort(np.concatenate([train_idx[np.concatenate(kept)], held_idx]))
    else:
        keep = np.arange(len(packed))
    starts, ends = packed.starts[keep], packed.ends[keep]
    lengths_kept = ends - starts
    # tokens[starts[i]:ends[i]] for every kept i, gathered in one indexing operation.
    offsets = np.repeat(starts - (np.cumsum(lengths_kept) - lengths_kept), lengths_kept)
    body = packed.tokens[offsets + np.arange(int(lengths_kept.sum()))]
    arrays = {"tokens": body.astype(np.uint16), "lengths": lengths_kept.astype(np.uint16),
              "source": packed.source[keep].astype(np.int16),
              "heldout": packed.heldout[keep].astype(bool)}
    arrays_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = arrays_path.with_name(arrays_path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)  # token ids deflate to about 63%: a smaller upload
    tmp.replace(arrays_path)
    held = arrays["heldout"]
    meta = {
        "format": SHARD_FORMAT,
        "corpora": [{"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
                    for p in corpora],
        "tokenizer_sha256": sha256_file(tokenizer_path),
        "vocab_size": vocab,
        **{key: getattr(cfg, key) for key in FIXED_KEYS},
        "corpus_weights": cfg.corpus_weights,
        "weights": effective,
        "sample": ({"method": "per-corpus prefix of a seeded permutation, fraction min(1, w*s)",
                    "max_tokens": max_tokens, "seed": seed,
                    "train_tokens_before": train_tokens} if sampled else None),
        "sequences": {"train": int((~held).sum()), "heldout": int(held.sum())},
        "tokens": {"train": int(arrays["lengths"][~held].sum(dtype=np.int64)),
                   "heldout": int(arrays["lengths"][held].sum(dtype=np.int64))},
        "npz_sha256": sha256_file(arrays_path),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_shard(path: Path) -> Shard:
    """The shard at ``path`` (``NAME.npz`` or ``NAME``), its hash checked against its JSON."""
    arrays_path, meta_path = shard_paths(path)
    for p in (arrays_path, meta_path):
        if not p.is_file():
            raise FileNotFoundError(f"shard file {p} does not exist")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != SHARD_FORMAT:
        raise ValueError(f"{meta_path}: shard format {meta.get('format')}, expected {SHARD_FORMAT}")
    if sha256_file(arrays_path) != meta["npz_sha256"]:
        raise ValueError(f"{arrays_path} does not match the sha256 in {meta_path}")
    with np.load(arrays_path, allow_pickle=False) as f:
        tokens, lengths = f["tokens"].astype(np.int32), f["lengths"].astype(np.int64)
        source, heldout = f["source"], f["heldout"]
    ends = np.cumsum(lengths)
    sequences = PackedSequences(tokens, ends - lengths, ends, heldout, source)
    return Shard(sequences, meta["weights"], meta)


def check_shard(shard: Shard, cfg: TrainConfig, tokenizer_path: Path) -> None:
    """Refuse a run whose settings or tokenizer differ from those the shard was built with."""
    meta = shard.meta
    wrong = [f"{key} {getattr(cfg, key)} (shard: {meta[key]})" for key in FIXED_KEYS
             if getattr(cfg, key) != meta[key]]
    if parse_corpus_weights(cfg.corpus_weights) != parse_corpus_weights(meta["corpus_weights"]):
        wrong.append(f"corpus_weights {cfg.corpus_weights!r} (shard: {meta['corpus_weights']!r})")
    if sha256_file(tokenizer_path) != meta["tokenizer_sha256"]:
        wrong.append(f"tokenizer {tokenizer_path} (not the one the shard was tokenized with)")
    if wrong:
        raise ValueError("the shard was built with other settings: " + "; ".join(wrong)
                         + "; rebuild it with `electric train-shard` or match them")
