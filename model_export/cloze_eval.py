"""Held-out cloze cross-entropy of the noise models, with unigram and bigram baselines.

The number is -mean log q(x_t | x_\\t) in nats per token over the non-special positions of
held-out sequences ([CLS] ... [SEP] token ids, as the tokenizer emits them). A better q gives the
energy model harder negatives and a tighter NCE bound; logging it shows whether the two-tower
noise model has learned more than the n-gram one, and both more than the baselines.

The baselines only see the left context (an ordinary LM), so they bound the easy part: a cloze
model that does not beat the bigram is not using its right context.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model_export.nce import NoiseModel
from model_export.ngram import CountTable, cloze_triples


def cloze_cross_entropy(noise: NoiseModel, sequences: Sequence[Sequence[int] | np.ndarray], *,
                        special_ids: Sequence[int], pad_id: int = 0, batch_size: int = 64) -> float:
    """Mean -log q(original token) over the non-special positions of ``sequences`` (nats/token).

    Works with any NoiseModel: it asks for no noise positions and scores every scorable one as
    data. A noise model with a ``model`` (TwoTowerNoise) is run in eval mode (no dropout) and
    restored; sequences must fit that model's max_positions.
    """
    module = getattr(noise, "model", None)
    was_training = bool(module is not None and module.training)
    if module is not None:
        module.eval()
    device = getattr(noise, "device", torch.device("cpu"))
    specials = torch.tensor(sorted(set(special_ids) | {pad_id}), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(sequences), batch_size):
                chunk = [torch.as_tensor(np.asarray(s), dtype=torch.long)
                         for s in sequences[i:i + batch_size]]
                ids = torch.nn.utils.rnn.pad_sequence(
                    chunk, batch_first=True, padding_value=pad_id).to(device)  # (B, T)
                mask = torch.zeros_like(ids)
                for row, seq in enumerate(chunk):
                    mask[row, :len(seq)] = 1
                data_pos = (mask.bool() & ~torch.isin(ids, specials)).nonzero()  # (M, 2)
                if not len(data_pos):
                    continue
                no_noise = data_pos[:0]
                draw = noise.sample_and_score(ids, mask, no_noise, data_pos, generator)
                total -= float(draw.logq_data.double().sum())
                count += len(data_pos)
    finally:
        if module is not None:
            module.train(was_training)
    return total / max(count, 1)


def unigram_bigram_baselines(train_seqs: Sequence[Sequence[int] | np.ndarray],
                             heldout_seqs: Sequence[Sequence[int] | np.ndarray], vocab_size: int,
                             *, special_ids: Sequence[int], pad_id: int = 0, add_k: float = 0.5,
                             discount: float = 0.75) -> dict[str, float]:
    """Held-out cross-entropy (nats/token) of an add-k unigram and a Kneser-Ney bigram.

    Both are normalised over the vocabulary minus the special ids, the same support as the
    n-gram cloze model, and score the same positions. The bigram is interpolated Kneser-Ney
    with one discount: P(x | a) = max(c(a, x) - D, 0) / c(a) + D u(a) / c(a) P_cont(x), where
    P_cont(x) counts the distinct left neighbours of x (add-k smoothed so unseen words keep mass).
    Returns {"unigram", "bigram", "tokens"}.
    """
    support = np.ones(vocab_size, dtype=bool)
    support[np.asarray(list(special_ids) + [pad_id], dtype=np.int64)] = False
    n_support = int(support.sum())

    a, x, _ = cloze_triples(train_seqs, vocab_size, special_ids, pad_id)
    ha, hx, _ = cloze_triples(heldout_seqs, vocab_size, special_ids, pad_id)

    counts = np.bincount(x, minlength=vocab_size)
    unigram = np.where(support, counts + add_k, 0.0) / (len(x) + add_k * n_support)

    bigram = CountTable.from_pairs(a, x, vocab_size)
    continuation = np.bincount(bigram.keys % vocab_size, minlength=vocab_size)  # N1+(. x)
    p_cont = (np.where(support, continuation + add_k, 0.0)
              / (len(bigram.keys) + add_k * n_support))
    _, total, distinct = bigram.row(ha)
    seen = np.maximum(total, 1)
    p_bigram = np.where(
        total > 0,
        np.maximum(bigram.count(ha, hx) - discount, 0.0) / seen
        + discount * distinct / seen * p_cont[hx],
        p_cont[hx])
    return {"unigram": float(-np.log(unigram[hx]).mean()),
            "bigram": float(-np.log(p_bigram).mean()),
            "tokens": float(len(hx))}
