"""The n-gram cloze noise model and the held-out cloze evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.cloze_eval import cloze_cross_entropy, unigram_bigram_baselines
from model_export.config import MODEL_PRESETS
from model_export.model import Electric
from model_export.nce import NCEConfig, TwoTowerNoise, nce_loss
from model_export.ngram import NgramCloze

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = [CLS, SEP, MASK]
V = 40
# Repetitive "sentences" over word ids 5..39: a few templates with one free slot.
TEMPLATES = [[5, 6, 7, 8], [9, 6, 10, 11, 12], [13, 14, 7, 15], [16, 17, 18, 19, 20, 21]]


def corpus(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n):
        words = list(TEMPLATES[rng.integers(len(TEMPLATES))])
        words[rng.integers(len(words))] = int(rng.integers(22, V))  # noise word in a free slot
        seqs.append(np.array([CLS, *words, SEP]))
    return seqs


@pytest.fixture(scope="module")
def ngram() -> NgramCloze:
    return NgramCloze.build(corpus(400, seed=0), V, special_ids=SPECIAL, pad_id=PAD)


def distribution(model: NgramCloze, left: int, right: int) -> np.ndarray:
    return np.exp(model.log_prob(np.full(V, left), np.full(V, right), np.arange(V)))


@pytest.mark.parametrize("left,right", [(5, 7), (6, 8), (CLS, 6), (20, SEP), (39, 38), (PAD, PAD),
                                        (UNK, 7)])
def test_normalised_over_vocabulary(ngram: NgramCloze, left: int, right: int) -> None:
    q = distribution(ngram, left, right)
    assert q.sum() == pytest.approx(1.0, abs=1e-9)
    assert (q[[PAD, CLS, SEP, MASK]] == 0).all()  # never produces a special token
    assert (q[[UNK] + list(range(5, V))] > 0).all()  # every other token keeps some mass


def test_frequent_context_predicts_its_token(ngram: NgramCloze) -> None:
    assert distribution(ngram, 5, 7).argmax() == 6  # "5 _ 7" is almost always 6
    assert distribution(ngram, 17, 19).argmax() == 18


def test_samples_follow_q(ngram: NgramCloze) -> None:
    n = 100_000
    u = np.random.default_rng(1).random((2, n))
    left, right = np.full(n, 6), np.full(n, 11)
    x, logq = ngram.sample(left, right, u)
    q = distribution(ngram, 6, 11)
    np.testing.assert_allclose(logq, np.log(q[x]))
    np.testing.assert_allclose(np.bincount(x, minlength=V) / n, q, atol=0.005)


def test_sample_and_score_on_a_batch(ngram: NgramCloze) -> None:
    seqs = corpus(6, seed=5)
    T = max(len(s) for s in seqs)
    ids = torch.tensor([list(s) + [PAD] * (T - len(s)) for s in seqs])
    mask = (ids != PAD).long()
    noise_pos = torch.tensor([[0, 1], [1, 2], [2, len(seqs[2]) - 2]])  # first and last words too
    data_pos = torch.tensor([[3, 1], [4, 3], [5, 2]])
    draw = ngram.sample_and_score(ids, mask, noise_pos, data_pos, torch.Generator().manual_seed(0))
    assert draw.mle_loss is None and draw.samples.shape == (3,)

    def neighbours(pos: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        b, t = pos[:, 0], pos[:, 1]
        return ids[b, t - 1].numpy(), ids[b, t + 1].numpy()

    left, right = neighbours(noise_pos)
    np.testing.assert_allclose(draw.logq_noise.numpy(),
                               ngram.log_prob(left, right, draw.samples.numpy()), rtol=1e-6)
    left, right = neighbours(data_pos)
    originals = ids[data_pos[:, 0], data_pos[:, 1]].numpy()
    np.testing.assert_allclose(draw.logq_data.numpy(), ngram.log_prob(left, right, originals),
                               rtol=1e-6)


def test_save_load_roundtrip(ngram: NgramCloze, tmp_path: Path) -> None:
    path = tmp_path / "ngram.npz"
    ngram.save(path)
    loaded = NgramCloze.load(path)
    for left, right in [(5, 7), (PAD, PAD), (30, 11)]:
        np.testing.assert_array_equal(distribution(loaded, left, right),
                                      distribution(ngram, left, right))


def test_ngram_drives_nce_loss(ngram: NgramCloze) -> None:
    torch.manual_seed(0)
    model = Electric(MODEL_PRESETS["tiny"])  # vocab 1000 > V: ids stay valid
    seqs = corpus(8, seed=6)
    T = max(len(s) for s in seqs)
    ids = torch.tensor([list(s) + [PAD] * (T - len(s)) for s in seqs])
    mask = (ids != PAD).long()
    special = torch.isin(ids, torch.tensor(SPECIAL))
    out = nce_loss(model, ids, mask, special, NCEConfig(), ngram, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.mle_loss.item() == 0.0 and out.n_noise == 8
    assert torch.isfinite(out.loss)


def test_ngram_cloze_beats_unigram_and_bigram() -> None:
    train, heldout = corpus(400, seed=0), corpus(100, seed=1)
    ngram = NgramCloze.build(train, V, special_ids=SPECIAL, pad_id=PAD)
    ce = cloze_cross_entropy(ngram, heldout, special_ids=SPECIAL, pad_id=PAD, batch_size=16)
    base = unigram_bigram_baselines(train, heldout, V, special_ids=SPECIAL, pad_id=PAD)
    assert base["tokens"] == sum(len(s) - 2 for s in heldout)
    assert ce < base["bigram"] < base["unigram"]
    assert ce < 0.6 * base["unigram"]


def test_cloze_cross_entropy_of_two_tower_model() -> None:
    torch.manual_seed(0)
    model = Electric(MODEL_PRESETS["tiny"]).train()
    seqs = corpus(10, seed=2)
    ce = cloze_cross_entropy(TwoTowerNoise(model), seqs, special_ids=SPECIAL, pad_id=PAD,
                             batch_size=4)
    assert model.training  # restored after evaluating in eval mode
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([list(s)])
            logq = model.noise(ids, torch.ones_like(ids), model.word_embeddings)[0]  # (T, V)
            for t in range(1, len(s) - 1):
                total -= logq[t, s[t]].item()
                count += 1
    assert ce == pytest.approx(total / count, rel=1e-5)
    assert ce == pytest.approx(np.log(1000), rel=0.05)  # an untrained q is near uniform
