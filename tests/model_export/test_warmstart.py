"""Warm start from a Hugging Face BERT checkpoint: a tiny random BertModel is the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from model_export.model import Electric
from model_export.warmstart import config_from_bert, load_bert_encoder

TINY_BERT: dict[str, int] = {
    "vocab_size": 214, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "max_position_embeddings": 64}


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its init, so that a tensor left unloaded shows in the outputs
    (fresh LayerNorms and zero biases would otherwise match by accident)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, transformers.BertModel]:
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(**TINY_BERT), add_pooling_layer=True)
    perturb_(bert, seed=1)
    folder = tmp_path_factory.mktemp("bert")
    bert.save_pretrained(folder, safe_serialization=True)
    return folder, bert.eval()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences of lengths 9, 5, 2, right padded with [PAD]=0."""
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(5, TINY_BERT["vocab_size"], (3, 9), generator=gen)
    mask = torch.zeros_like(ids)
    for row, length in enumerate((9, 5, 2)):
        mask[row, :length] = 1
    return ids * mask, mask


def test_config_from_bert_reads_shape_and_sizes_noise(bert_folder: tuple[Path, object]) -> None:
    cfg = config_from_bert(bert_folder[0])
    assert (cfg.vocab_size, cfg.hidden, cfg.layers, cfg.heads, cfg.intermediate) == (214, 32, 2, 2, 64)
    assert (cfg.embedding_size, cfg.max_positions, cfg.pad_id) == (32, 64, 0)
    assert cfg.noise_hidden == 8 and cfg.noise_hidden % cfg.noise_heads == 0
    assert config_from_bert(bert_folder[0], noise_hidden=12, dropout=0.0).noise_heads == 4
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        config_from_bert(bert_folder[0], hiden=64)


def test_hidden_states_match_bert(bert_folder: tuple[Path, transformers.BertModel]) -> None:
    folder, bert = bert_folder
    model = Electric(config_from_bert(folder)).eval()
    noise_before = {k: v.clone() for k, v in model.noise.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.energy.head.state_dict().items()}

    report = load_bert_encoder(model, folder)

    assert report["missing"] == []
    assert report["unexpected"] == ["pooler.dense.bias", "pooler.dense.weight"]
    assert len(report["loaded"]) == 5 + 16 * 2  # embeddings + 16 tensors per layer
    ids, mask = padded_batch()
    with torch.no_grad():
        ours = model.energy.hidden_states(ids, mask)
        theirs = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=0)
    # The noise model shares the (now pre-trained) token embeddings; its own weights and the
    # energy head keep their fresh init.
    assert torch.equal(model.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    for k, v in model.noise.state_dict().items():
        assert torch.equal(v, noise_before[k]), k
    for k, v in model.energy.head.state_dict().items():
        assert torch.equal(v, head_before[k]), k


def test_task_model_prefix_is_stripped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mlm = transformers.BertForMaskedLM(transformers.BertConfig(**TINY_BERT))
    mlm.save_pretrained(tmp_path, safe_serialization=True)
    model = Electric(config_from_bert(tmp_path))
    report = load_bert_encoder(model, tmp_path)
    assert report["missing"] == [] and len(report["loaded"]) == 37
    assert all(k.startswith("cls.") for k in report["unexpected"])
    assert torch.equal(model.energy.encoder.layer[1].output.dense.weight,
                       mlm.bert.encoder.layer[1].output.dense.weight)


def test_fewer_layers_loads_a_prefix_and_reports_the_rest(bert_folder: tuple[Path, object]) -> None:
    folder = bert_folder[0]
    report = load_bert_encoder(Electric(config_from_bert(folder, layers=1)), folder)
    assert any(k.startswith("encoder.layer.1.") for k in report["unexpected"])


def test_missing_layers_are_an_error_unless_not_strict(bert_folder: tuple[Path, object]) -> None:
    folder = bert_folder[0]
    with pytest.raises(ValueError, match="lacks 16 encoder tensors"):
        load_bert_encoder(Electric(config_from_bert(folder, layers=3)), folder)
    report = load_bert_encoder(Electric(config_from_bert(folder, layers=3)), folder, strict=False)
    assert len(report["missing"]) == 16


def test_shape_mismatch_is_an_error_and_writes_nothing(bert_folder: tuple[Path, object]) -> None:
    folder = bert_folder[0]
    model = Electric(config_from_bert(folder, intermediate=48))
    before = model.word_embeddings.weight.clone()
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight: checkpoint \(64, 32\), model \(48, 32\)"):
        load_bert_encoder(model, folder)
    assert torch.equal(model.word_embeddings.weight, before)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "roberta"}, "model_type 'roberta' is not supported"),
    ({"hidden_act": "gelu_new"}, "hidden_act 'gelu_new' is not supported"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"is_decoder": True}, "decoder"),
])
def test_unsupported_configs_are_refused(bert_folder: tuple[Path, object], tmp_path: Path,
                                         change: dict[str, object], message: str) -> None:
    config = json.loads((bert_folder[0] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(ValueError, match=message):
        config_from_bert(tmp_path)


def test_pickle_checkpoints_are_refused(bert_folder: tuple[Path, object], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((bert_folder[0] / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    model = Electric(config_from_bert(tmp_path))
    with pytest.raises(FileNotFoundError, match="pickle"):
        load_bert_encoder(model, tmp_path)
