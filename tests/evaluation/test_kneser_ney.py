"""The Kneser-Ney baseline LM: normalisation, a dictionary-based reference, unknown words."""

from __future__ import annotations

import gzip
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from evaluation.kneser_ney import BOS, EOS, UNK, KneserNey, discounts, words

CORPUS = [
    "the cat sat on the mat .",
    "the dog sat on the log .",
    "a cat ran to the mat",
    "the cat ran on the mat .",
    "The dog ran, the cat sat!",
    "a dog sat on a log",
    "the the the",
    "on the mat the cat sat",
] * 2 + ["x y z", "the bird sat on the log ."]


def next_word_probs(lm: KneserNey, context: str) -> dict[str, float]:
    """p(w | context) for every w the LM can predict, read off its sentence scores."""
    n = len(words(context))
    out = {}
    for w in lm.vocab:
        if w == BOS:
            continue
        # </s> is predicted after the context itself; <unk> by any unknown word.
        text = context if w == EOS else f"{context} {'qqqq' if w == UNK else w}"
        logp, _ = lm.position_log_probs([text])
        out[w] = float(np.exp(logp[n]))
    return out


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("context", ["", "the", "the cat sat on", "zzz the cat", "on a",
                                     "x y", "the the the the"])
def test_every_distribution_sums_to_one(order: int, context: str) -> None:
    lm = KneserNey.train(CORPUS, order)
    assert sum(next_word_probs(lm, context).values()) == pytest.approx(1.0, abs=1e-9)


def reference_kn(corpus: list[str], order: int):
    """A direct transcription of interpolated modified KN with dictionaries (slow, obvious)."""
    sents = [[BOS, *words(s), EOS] for s in corpus]
    vocab = {UNK, EOS} | {w for s in sents for w in s[1:]}
    raw = [Counter() for _ in range(order + 1)]
    for s in sents:
        for k in range(1, order + 1):
            for i in range(len(s) - k + 1):
                g = tuple(s[i:i + k])
                if g != (BOS,):
                    raw[k][g] += 1
    counts = [Counter() for _ in range(order + 1)]
    counts[order] = raw[order]
    for k in range(1, order):
        left = Counter(g[1:] for g in raw[k + 1])  # distinct left extensions
        counts[k] = Counter({g: (raw[k][g] if g[0] == BOS else left[g]) for g in raw[k]
                             if g[0] == BOS or left[g]})
    D = [None] + [discounts(np.array(list(counts[k].values()))) for k in range(1, order + 1)]
    stats = [None] + [defaultdict(lambda: [0.0, 0.0]) for _ in range(order)]
    for k in range(1, order + 1):
        for g, c in counts[k].items():
            st = stats[k][g[:-1]]
            st[0] += c
            st[1] += D[k][min(c, 3)]

    def prob(history: tuple[str, ...], w: str) -> float:
        p = 1.0 / (len(vocab))
        for k in range(1, order + 1):
            h = history[len(history) - (k - 1):] if k > 1 else ()
            if len(h) < k - 1:
                break
            total, gamma = stats[k].get(h, (0.0, 0.0))
            if total == 0:
                continue
            c = counts[k].get(h + (w,), 0)
            p = (max(c - D[k][min(c, 3)], 0.0) + gamma * p) / total
        return p

    return prob


@pytest.mark.parametrize("order", [2, 3])
def test_matches_a_dictionary_reference(order: int) -> None:
    lm = KneserNey.train(CORPUS, order)
    prob = reference_kn(CORPUS, order)
    for text in ["the cat sat on the mat .", "a dog ran on the log", "the bird ran",
                 "z y x the", "on on on"]:
        ws = [w if w in lm.vocab else UNK for w in words(text)]
        seq = [BOS, *ws, EOS]
        expected = [math.log(prob(tuple(seq[:i]), seq[i])) for i in range(1, len(seq))]
        got, _ = lm.position_log_probs([text])
        assert got == pytest.approx(expected, abs=1e-9), text


def test_discounts_follow_the_count_of_counts() -> None:
    counts = np.array([1] * 10 + [2] * 4 + [3] * 2 + [4] * 1)
    y = 10 / (10 + 2 * 4)
    assert discounts(counts) == pytest.approx(
        [0.0, 1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2])
    # Degenerate statistics fall back to valid discounts.
    assert discounts(np.array([5, 7])).tolist() == [0.0, 0.5, 1.0, 1.5]


def test_scores_count_words_and_the_end_of_sentence() -> None:
    lm = KneserNey.train(CORPUS, 4)
    (s1, n1), (s2, n2), (s3, n3) = lm.score(
        ["the cat sat on the mat .", "mat the on sat cat the .", ""])
    assert (n1, n2, n3) == (8, 8, 1)
    assert s1 > s2  # word order matters
    assert s3 < 0


def test_unknown_words_share_the_unk_probability() -> None:
    lm = KneserNey.train(CORPUS, 4)
    a, b = lm.score(["the foo sat", "the bar sat"])
    assert a[0] == pytest.approx(b[0])


def test_words_are_lower_cased_and_punctuation_is_split() -> None:
    assert words("The dog ran, the CAT sat!") == [
        "the", "dog", "ran", ",", "the", "cat", "sat", "!"]


def test_trains_from_gzipped_corpora(tmp_path: Path) -> None:
    path = tmp_path / "c.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(CORPUS[:8]) + "\n\n" + "\n".join(CORPUS[8:]) + "\n")
    from_files = KneserNey.from_corpora([path], order=3)
    direct = KneserNey.train(CORPUS, order=3)
    ((got, n_got),) = from_files.score(["the cat sat"])
    ((want, n_want),) = direct.score(["the cat sat"])
    assert got == pytest.approx(want) and n_got == n_want
    assert (from_files.perplexity(["the cat sat on the mat ."])
            < from_files.perplexity(["mat sat the"]))
