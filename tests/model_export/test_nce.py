"""The NCE objective: hand-computed values, counts with padding, stop-gradient, unbiasedness."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model_export.config import MODEL_PRESETS
from model_export.model import Electric
from model_export.nce import (
    NCEConfig,
    NoiseDraw,
    TwoTowerNoise,
    choose_positions,
    nce_loss,
    sample_categorical,
)

PAD, CLS, SEP = 0, 2, 3
V = 50


class TableEnergy(nn.Module):
    """E(x)_t = table[x_t]: context-free energies we can compute by hand."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


class TableNoise:
    """log q(x) = logq[x], context free; samples are (original + 1) mod V. Records its calls."""

    def __init__(self, logq: torch.Tensor):
        self.logq = logq
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def sample_and_score(self, input_ids, attention_mask, noise_pos, data_pos, generator):
        self.calls.append((noise_pos, data_pos))
        samples = (input_ids[noise_pos[:, 0], noise_pos[:, 1]] + 1) % V
        originals = input_ids[data_pos[:, 0], data_pos[:, 1]]
        return NoiseDraw(samples=samples, logq_noise=self.logq[samples],
                         logq_data=self.logq[originals], mle_loss=None)


def make_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """[CLS] w... [SEP] rows, right padded; returns ids, mask, special."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths) + 2
    ids = torch.full((len(lengths), T), PAD, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 0] = CLS
        ids[row, 1:n + 1] = torch.randint(5, V, (n,), generator=g)
        ids[row, n + 1] = SEP
    mask = (ids != PAD).long()
    special = (ids == CLS) | (ids == SEP)
    return ids, mask, special


def expected_k(n: int, p: float) -> int:
    return min(max(1, round(p * n)), n - 1) if n >= 2 else 0


def test_loss_matches_closed_form() -> None:
    # One sequence of 4 words, zero energies, q = 1/2 everywhere: k = 1, prior odds 1/3, every
    # logit is log(1/2 * 1/3) = log(1/6). Noise: -log sigmoid = log 7; data: log(7/6).
    ids, mask, special = make_batch([4])
    model = TableEnergy(torch.zeros(V))
    noise = TableNoise(torch.full((V,), math.log(0.5)))
    out = nce_loss(model, ids, mask, special, NCEConfig(), noise, torch.Generator().manual_seed(0))
    expected = (math.log(7) + 3 * math.log(7 / 6)) / 4
    assert out.nce_loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.loss.item() == pytest.approx(50 * expected, rel=1e-6)
    assert out.mle_loss.item() == 0.0
    assert (out.n_noise, out.n_data, out.n_scorable) == (1.0, 3.0, 4.0)
    assert out.noise_acc == 0.0 and out.data_acc == 1.0  # every logit is log(1/6) < 0


@pytest.mark.parametrize("data_fraction", [1.0, 0.4])
def test_loss_matches_scalar_reference(data_fraction: float) -> None:
    lengths = [9, 3, 1, 14, 0]
    ids, mask, special = make_batch(lengths, seed=1)
    g = torch.Generator().manual_seed(7)
    table, logq = torch.randn(V, generator=g), -3 * torch.rand(V, generator=g) - 0.5
    model, noise = TableEnergy(table), TableNoise(logq)
    cfg = NCEConfig(mask_prob=0.25, data_fraction=data_fraction)
    out = nce_loss(model, ids, mask, special, cfg, noise, torch.Generator().manual_seed(3))
    noise_pos, data_pos = noise.calls[0]

    # Same loss written one position at a time.
    total, n_total = 0.0, 0
    for row, n in enumerate(lengths):
        k = expected_k(n, cfg.mask_prob)
        if k == 0:
            continue
        n_total += n
        prior = math.log(k / (n - k))
        rows_noise = [int(t) for b, t in noise_pos.tolist() if b == row]
        rows_data = [int(t) for b, t in data_pos.tolist() if b == row]
        assert len(rows_noise) == k
        for t in rows_noise:
            x = (int(ids[row, t]) + 1) % V
            total += -math.log(torch.sigmoid(table[x] + logq[x] + prior).item())
        for t in rows_data:
            x = int(ids[row, t])
            weight = (n - k) / len(rows_data)
            total += -weight * math.log(1 - torch.sigmoid(table[x] + logq[x] + prior).item())
    assert out.nce_loss.item() == pytest.approx(total / n_total, rel=1e-5)


def test_counts_with_padding() -> None:
    lengths = [20, 7, 1, 2, 0, 33]
    ids, mask, special = make_batch(lengths)
    cfg = NCEConfig(data_fraction=0.5)
    noise = TableNoise(torch.full((V,), -2.0))
    out = nce_loss(TableEnergy(torch.zeros(V)), ids, mask, special, cfg, noise,
                   torch.Generator().manual_seed(0))
    ks = [expected_k(n, cfg.mask_prob) for n in lengths]
    assert out.n_noise == sum(ks)
    assert out.n_scorable == sum(n for n, k in zip(lengths, ks) if k)
    assert out.n_data == sum(max(1, round(0.5 * (n - k))) for n, k in zip(lengths, ks) if k)
    noise_pos, data_pos = noise.calls[0]
    for pos in (noise_pos, data_pos):
        assert not special[pos[:, 0], pos[:, 1]].any()
        assert mask[pos[:, 0], pos[:, 1]].all()
    both = torch.cat([noise_pos, data_pos])
    assert len(set(map(tuple, both.tolist()))) == len(both)  # without replacement, disjoint


def test_choose_positions_is_deterministic_given_seed() -> None:
    _, mask, special = make_batch([10, 30, 5])
    scorable = mask.bool() & ~special
    draws = [choose_positions(scorable, NCEConfig(data_fraction=0.3),
                              torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], draws[2][0])


def test_data_fraction_is_unbiased() -> None:
    # 2000 copies of three sequences in one batch: the batch loss averages 2000 independent
    # subsamples. The same seed draws the same noise positions for both fractions, so only the
    # data subsampling differs.
    ids, mask, special = (t.repeat(2000, 1) for t in make_batch([12, 25, 6], seed=2))
    g = torch.Generator().manual_seed(1)
    model = TableEnergy(torch.randn(V, generator=g) * 2)
    noise = TableNoise(-4 * torch.rand(V, generator=g))

    def loss(fraction: float) -> float:
        return nce_loss(model, ids, mask, special, NCEConfig(data_fraction=fraction), noise,
                        torch.Generator().manual_seed(0)).nce_loss.item()

    assert loss(0.2) == pytest.approx(loss(1.0), rel=0.02)


def tiny_electric() -> Electric:
    torch.manual_seed(0)
    model = Electric(MODEL_PRESETS["tiny"])
    with torch.no_grad():  # a peaked q, so sampling tests have something to find
        model.noise.output_bias.normal_(0.0, 2.0)
    return model


def test_two_tower_scores_match_full_softmax() -> None:
    model = tiny_electric().eval()
    ids, mask, special = make_batch([9, 4, 12], seed=3)
    scorable = mask.bool() & ~special
    noise_mask, data_mask, _, _ = choose_positions(scorable, NCEConfig(),
                                                   torch.Generator().manual_seed(0))
    noise_pos, data_pos = noise_mask.nonzero(), data_mask.nonzero()
    draw = TwoTowerNoise(model).sample_and_score(ids, mask, noise_pos, data_pos,
                                                 torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.noise(ids, mask, model.word_embeddings)  # (B, T, V) log q
    at_noise = full[noise_pos[:, 0], noise_pos[:, 1]]
    torch.testing.assert_close(draw.logq_noise, at_noise.gather(-1, draw.samples[:, None])[:, 0])
    torch.testing.assert_close(draw.logq_data,
                               full[data_pos[:, 0], data_pos[:, 1]].gather(
                                   -1, ids[data_pos[:, 0], data_pos[:, 1], None])[:, 0])
    originals = ids[noise_pos[:, 0], noise_pos[:, 1]]
    torch.testing.assert_close(draw.mle_loss, F.nll_loss(at_noise, originals))


def test_two_tower_samples_follow_q() -> None:
    model = tiny_electric().eval()
    ids, mask, _ = make_batch([6], seed=4)
    draws = 20000
    pos = torch.tensor([[0, 3]]).expand(draws, 2)  # the same position, many times
    draw = TwoTowerNoise(model).sample_and_score(ids, mask, pos, pos[:0],
                                                 torch.Generator().manual_seed(2))
    q = draw.logq_noise.exp()
    freq = torch.bincount(draw.samples, minlength=model.cfg.vocab_size).float() / draws
    probs = torch.zeros(model.cfg.vocab_size).scatter_(0, draw.samples, q)
    top = probs.topk(5).indices
    torch.testing.assert_close(freq[top], probs[top], atol=0.01, rtol=0.0)


def test_no_gradient_through_log_q() -> None:
    ids, mask, special = make_batch([10, 7])
    logq = torch.full((V,), -3.0, requires_grad=True)
    model = TableEnergy(torch.zeros(V))
    out = nce_loss(model, ids, mask, special, NCEConfig(), TableNoise(logq),
                   torch.Generator().manual_seed(0))
    out.loss.backward()
    assert logq.grad is None
    assert model.table.grad is not None and model.table.grad.abs().sum() > 0


def test_two_tower_nce_trains_noise_only_through_mle() -> None:
    model = tiny_electric().train()
    ids, mask, special = make_batch([12, 8, 15])
    cfg = NCEConfig(mle_weight=0.0)
    out = nce_loss(model, ids, mask, special, cfg, TwoTowerNoise(model),
                   torch.Generator().manual_seed(0))
    out.loss.backward()
    for name, p in model.noise.named_parameters():
        assert p.grad is None or p.grad.abs().sum() == 0, name
    assert model.energy.head.dense_prediction.weight.grad.abs().sum() > 0

    model.zero_grad(set_to_none=True)
    out = nce_loss(model, ids, mask, special, NCEConfig(), TwoTowerNoise(model),
                   torch.Generator().manual_seed(0))
    out.loss.backward()
    assert model.noise.output_bias.grad.abs().sum() > 0
    assert math.isfinite(out.loss.item()) and 0.0 <= out.copy_rate <= 1.0


def test_two_tower_loss_is_deterministic_given_seed() -> None:
    model = tiny_electric().eval()
    ids, mask, special = make_batch([12, 8, 15])
    losses = [nce_loss(model, ids, mask, special, NCEConfig(data_fraction=0.5),
                       TwoTowerNoise(model), torch.Generator().manual_seed(s)).loss.item()
              for s in (3, 3, 4)]
    assert losses[0] == losses[1] != losses[2]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="mask_prob"):
        NCEConfig(mask_prob=1.0)
    with pytest.raises(ValueError, match="data_fraction"):
        NCEConfig(data_fraction=0.0)


def test_a_draw_follows_each_rows_distribution_and_never_picks_an_impossible_token() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0, float("-inf")],
                           [-30.0, -30.0, 5.0, 5.0]])
    draws = 40000
    rows = logits.repeat_interleave(draws, 0)  # (2 * draws, 4)
    samples, logq = sample_categorical(rows.log_softmax(-1), torch.Generator().manual_seed(5))
    samples = samples.view(2, draws)
    torch.testing.assert_close(logq, rows.log_softmax(-1).gather(-1, samples.view(-1, 1))[:, 0])
    assert (samples[0] != 3).all(), "a token of probability 0 was drawn"
    for row in range(2):
        freq = torch.bincount(samples[row], minlength=4).float() / draws
        torch.testing.assert_close(freq, logits[row].softmax(-1), atol=0.01, rtol=0.0)
    none, none_logq = sample_categorical(logits[:0].log_softmax(-1),
                                        torch.Generator().manual_seed(5))
    assert none.shape == none_logq.shape == (0,)
