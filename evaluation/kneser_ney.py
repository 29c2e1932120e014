"""A word-level interpolated modified Kneser-Ney n-gram LM (Chen & Goodman 1998), numpy only.

The baseline an Electric re-ranker must beat: a 4-gram LM trained on the same corpora. Text is
lower-cased and split into words and punctuation marks (``\\w+`` runs and single other
characters); each sentence is framed as ``<s> w_1 ... w_n </s>``. Unknown words map to ``<unk>``.

For an n-gram ``h w`` of order k, with c the count at that order (raw counts at the highest
order and for n-grams starting with ``<s>``, which have no left context; continuation counts
N1+(. h w) otherwise, as in KenLM):

    p_k(w | h) = max(c(h w) - D_k(c), 0) / c(h .) + gamma_k(h) p_{k-1}(w | h')
    gamma_k(h) = (D_k1 N1(h .) + D_k2 N2(h .) + D_k3+ N3+(h .)) / c(h .)

and p_k(w | h) = p_{k-1}(w | h') when c(h .) = 0. Discounts come from the count-of-counts of
each order: Y = n1 / (n1 + 2 n2), D_r = r - (r + 1) Y n_{r+1} / n_r. Order 1 interpolates with
the uniform distribution over the vocabulary (``<unk>`` and ``</s>`` included, ``<s>`` not),
so every distribution sums to one.

N-grams are stored per order as sorted int64 keys ``prefix_id * V + word``, where ``prefix_id``
is the index of the (k-1)-gram in the order below (the word id at order 1): a lookup is a
``np.searchsorted``, vectorised over every position of a batch of sentences.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.corpus import read_lines

WORD = re.compile(r"\w+|[^\w\s]")
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: the units the LM predicts."""
    return WORD.findall(text.lower())


def discounts(counts: np.ndarray) -> np.ndarray:
    """(4,) discounts for counts 0, 1, 2, 3+ from the count-of-counts (Chen & Goodman, eq. 26).

    Degenerate statistics (tiny corpora) fall back to 0.5, 1.0, 1.5: any D_r in (0, r] keeps
    the distributions normalised.
    """
    n = [float(np.count_nonzero(counts == r)) for r in (1, 2, 3, 4)]
    out = np.array([0.0, 0.5, 1.0, 1.5])
    if n[0] > 0 and n[1] > 0:
        y = n[0] / (n[0] + 2 * n[1])
        for r in (1, 2, 3):
            if n[r - 1] > 0:
                d = r - (r + 1) * y * n[r] / n[r - 1]
                if 0 < d <= r:
                    out[r] = d
    return out


@dataclass
class Level:
    """The n-grams of one order k >= 2 and the statistics of their contexts (order k - 1)."""

    keys: np.ndarray  # (E,) int64 sorted: prefix_id * V + word
    counts: np.ndarray  # (E,) float64 (modified) counts used at this order
    context_total: np.ndarray  # (C,) c(h .) per context id
    gamma_num: np.ndarray  # (C,) D1 N1(h .) + D2 N2(h .) + D3 N3+(h .)
    discount: np.ndarray  # (4,)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """(Q,) keys -> (Q,) row index, or -1 where absent."""
        i = np.searchsorted(self.keys, keys).clip(max=max(len(self.keys) - 1, 0))
        hit = (self.keys[i] == keys) if len(self.keys) else np.zeros(len(keys), dtype=bool)
        return np.where(hit, i, -1)


def _frame(sentences: Iterable[str], vocab: dict[str, int], grow: bool
           ) -> tuple[np.ndarray, np.ndarray]:
    """Sentences -> flat ids ``<s> w.. </s> <s> ..`` and the sentence index of each position."""
    ids: list[int] = []
    lengths: list[int] = []
    for text in sentences:
        ws = words(text)
        if grow:
            ids.append(BOS_ID)
            ids.extend(vocab.setdefault(w, len(vocab)) for w in ws)
        else:
            ids.append(BOS_ID)
            ids.extend(vocab.get(w, UNK_ID) for w in ws)
        ids.append(EOS_ID)
        lengths.append(len(ws) + 2)
    x = np.asarray(ids, dtype=np.int64)
    sid = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return x, sid


def _within(sid: np.ndarray, span: int) -> np.ndarray:
    """(n,) True at i when positions i .. i + span - 1 lie in one sentence."""
    ok = np.zeros(len(sid), dtype=bool)
    if len(sid) >= span:
        ok[:len(sid) - span + 1] = sid[:len(sid) - span + 1] == sid[span - 1:]
    return ok


class KneserNey:
    def __init__(self, order: int, vocab: dict[str, int], unigram_logp: np.ndarray,
                 levels: list[Level]):
        self.order = order
        self.vocab = vocab
        self.V = len(vocab)
        self.unigram_logp = unigram_logp  # (V,)
        self.levels = levels  # levels[k - 2] is order k

    @classmethod
    def train(cls, sentences: Iterable[str], order: int = 4) -> KneserNey:
        if order < 2:
            raise ValueError(f"order must be at least 2, got {order}")
        vocab = {UNK: UNK_ID, BOS: BOS_ID, EOS: EOS_ID}
        x, sid = _frame(sentences, vocab, grow=True)
        V = len(vocab)
        n = len(x)
        # gid[k][i]: index of the k-gram starting at i in order k's table (-1 if it crosses a
        # sentence end); order 1's "table" is the vocabulary itself.
        gid: list[np.ndarray] = [np.empty(0, np.int64), x]
        raw: list[np.ndarray] = [np.empty(0), np.empty(0)]
        keys: list[np.ndarray] = [np.empty(0, np.int64), np.arange(V, dtype=np.int64)]
        first: list[np.ndarray] = [np.empty(0, np.int64), np.empty(0, np.int64)]
        for k in range(2, order + 1):
            pos = np.flatnonzero(_within(sid, k))
            key = gid[k - 1][pos] * V + x[pos + k - 1]
            uniq, first_i, inverse, counts = np.unique(key, return_index=True,
                                                       return_inverse=True, return_counts=True)
            g = np.full(n, -1, dtype=np.int64)
            g[pos] = inverse
            gid.append(g)
            keys.append(uniq)
            raw.append(counts.astype(np.float64))
            first.append(pos[first_i])
        # Continuation counts: distinct left extensions, i.e. the (k+1)-grams whose suffix is
        # the k-gram.
        def continuation(k: int, size: int) -> np.ndarray:
            suffix = gid[k][first[k + 1] + 1]
            return np.bincount(suffix, minlength=size).astype(np.float64)

        levels: list[Level] = []
        for k in range(2, order + 1):
            if k == order:
                counts = raw[k]
            else:
                counts = continuation(k, len(keys[k]))
                # n-grams starting with <s> have no left context: they keep their raw counts.
                starts_bos = x[first[k]] == BOS_ID
                counts = np.where(starts_bos, raw[k], counts)
            d = discounts(counts)
            prefix = keys[k] // V
            size = V if k == 2 else len(keys[k - 1])
            total = np.bincount(prefix, weights=counts, minlength=size)
            gamma = np.bincount(prefix, weights=d[np.minimum(counts, 3).astype(np.int64)],
                                minlength=size)
            levels.append(Level(keys[k], counts, total, gamma, d))

        uni = np.bincount(keys[2] % V, minlength=V).astype(np.float64)  # N1+(. w)
        uni[BOS_ID] = 0.0  # never predicted
        d = discounts(uni[uni > 0])
        total = uni.sum()
        gamma = d[np.minimum(uni, 3).astype(np.int64)][uni > 0].sum() / total
        p = np.maximum(uni - d[np.minimum(uni, 3).astype(np.int64)], 0.0) / total + gamma / (V - 1)
        p[BOS_ID] = 0.0
        with np.errstate(divide="ignore"):
            return cls(order, vocab, np.log(p), levels)

    @classmethod
    def from_corpora(cls, paths: Sequence[Path], order: int = 4) -> KneserNey:
        return cls.train(read_lines(paths), order)

    def position_log_probs(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(N,) natural-log probabilities of every predicted token (words and </s>) and (N,)
        the sentence each belongs to, in order."""
        x, sid = _frame(sentences, self.vocab, grow=False)
        n, V = len(x), self.V
        target = np.flatnonzero(x != BOS_ID)  # (N,)
        p = np.exp(self.unigram_logp[x[target]])
        # Context ids of every length m starting at each position, built up from m = 1.
        ctx = x.copy()  # m = 1: the word id
        for k, level in enumerate(self.levels, start=2):
            m = k - 1  # context length; ctx holds ids of m-grams starting at each position
            start = target - m
            ok = (start >= 0)
            ok[ok] &= sid[start[ok]] == sid[target[ok]]
            c_id = np.full(len(target), -1, dtype=np.int64)
            c_id[ok] = ctx[start[ok]]
            use = c_id >= 0
            use[use] &= level.context_total[c_id[use]] > 0
            rows = level.find(c_id[use] * V + x[target[use]])
            c = np.where(rows >= 0, level.counts[rows.clip(min=0)], 0.0)
            total = level.context_total[c_id[use]]
            d = level.discount[np.minimum(c, 3).astype(np.int64)]
            p[use] = (np.maximum(c - d, 0.0) + level.gamma_num[c_id[use]] * p[use]) / total
            if k < self.order:  # ids of k-grams (the next order's contexts) at each position
                nxt = np.full(n, -1, dtype=np.int64)
                valid = _within(sid, k) & (ctx >= 0)
                i = np.flatnonzero(valid)
                nxt[i] = level.find(ctx[i] * V + x[i + k - 1])
                ctx = nxt
        return np.log(p), sid[target]

    def score(self, sentences: Sequence[str]) -> list[tuple[float, int]]:
        """Per sentence: (log-probability in nats of its words and </s>, words + 1)."""
        logp, owner = self.position_log_probs(sentences)
        sums = np.bincount(owner, weights=logp, minlength=len(sentences))
        counts = np.bincount(owner, minlength=len(sentences))
        return [(float(s), int(c)) for s, c in zip(sums, counts)]

    def perplexity(self, sentences: Sequence[str]) -> float:
        logp, _ = self.position_log_probs(sentences)
        return float(np.exp(-logp.mean()))
