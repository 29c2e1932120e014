"""Weights read back from an exported artifact (from_artifact.py), and training continued from one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import SENTENCES, build_tiny_electric, encode_padded

from model_export.config import preset
from model_export.export import export_artifact
from model_export.from_artifact import artifact_config, electric_from_artifact, energy_state
from model_export.train import train


@pytest.fixture(scope="module")
def model():
    return build_tiny_electric()


@pytest.fixture(scope="module")
def rowwise_only(model, tiny_tokenizer_path: Path, tmp_path_factory) -> Path:
    """What the project ships: a rowwise int8 variant and no fp32 one."""
    folder = tmp_path_factory.mktemp("shipped") / "tiny-int8"
    export_artifact(model, model.cfg, tiny_tokenizer_path, folder, name="tiny-int8",
                    variants=("int8",), int8_scheme="rowwise", calibration=SENTENCES)
    return folder


def energies(energy: torch.nn.Module) -> np.ndarray:
    ids, mask = encode_padded(SENTENCES)
    with torch.no_grad():
        out = energy.eval()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return out[mask.astype(bool)]


def test_the_config_is_read_from_the_manifest_and_the_graph(model, tiny_artifact: Path) -> None:
    cfg = artifact_config(tiny_artifact)
    mine = model.cfg
    assert (cfg.vocab_size, cfg.hidden, cfg.layers, cfg.heads, cfg.intermediate,
            cfg.max_positions, cfg.pad_id) == (mine.vocab_size, mine.hidden, mine.layers,
                                               mine.heads, mine.intermediate,
                                               mine.max_positions, mine.pad_id)
    assert cfg.embedding_size == mine.embedding_size
    assert cfg.layer_norm_eps == mine.layer_norm_eps


def test_a_fp32_variant_gives_the_trained_weights_exactly(model, tiny_artifact: Path) -> None:
    state = energy_state(tiny_artifact, artifact_config(tiny_artifact))
    trained = model.energy.state_dict()
    assert set(state) == set(trained)
    # Segment 1's embedding is never read by the graph (Electric scores one segment).
    for name, value in trained.items():
        got = state[name][0] if name.endswith("token_type_embeddings.weight") else state[name]
        want = value[0] if name.endswith("token_type_embeddings.weight") else value
        assert torch.equal(got, want), name


def test_a_rowwise_int8_variant_gives_the_function_it_computes(model, rowwise_only: Path) -> None:
    recovered, _ = electric_from_artifact(rowwise_only)
    want, got = energies(model.energy), energies(recovered.energy)
    rms = float(np.sqrt(np.mean((got - want) ** 2)))
    assert rms < 0.05 * want.std(), rms
    assert np.corrcoef(got, want)[0, 1] > 0.99
    # The energy head stays float in the int8 file: it comes back exactly.
    for name, value in model.energy.head.state_dict().items():
        assert torch.equal(recovered.energy.head.state_dict()[name], value), name
    # A quantised weight comes back close, not equal.
    q = model.energy.encoder.layer[0].intermediate.dense.weight.detach()
    r = recovered.energy.encoder.layer[0].intermediate.dense.weight.detach()
    assert not torch.equal(q, r) and torch.allclose(q, r, atol=0.05 * float(q.abs().max()))


def test_the_dynamic_int8_scheme_is_refused_by_name(model, tiny_tokenizer_path: Path,
                                                    tmp_path: Path) -> None:
    folder = tmp_path / "dynamic"
    export_artifact(model, model.cfg, tiny_tokenizer_path, folder, name="d", variants=("int8",))
    with pytest.raises(ValueError, match="'dynamic' scheme"):
        electric_from_artifact(folder)


def test_training_continues_from_an_artifact(model, rowwise_only: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 20) + "\n")
    recovered, _ = electric_from_artifact(rowwise_only)
    # lr 0: the run must end with the weights it read back, and noise towers, which an
    # artifact lacks, made for it.
    cfg = preset("tiny", init_from=str(rowwise_only), noise_pretrain_steps=2, steps=2, lr=0.0,
                 fresh_lr=0.0, eval_every=0)
    final = load_file(train(cfg, [corpus], tmp_path / "run"))
    for name, value in recovered.energy.state_dict().items():
        assert torch.equal(final[f"energy.{name}"], value), name
    assert any(k.startswith("noise.") for k in final)
    training = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    assert training["init_from"]["source"] == str(rowwise_only)
    with pytest.raises(ValueError, match="noise_pretrain_steps"):
        train(preset("tiny", init_from=str(rowwise_only), noise_pretrain_steps=0, steps=1),
              [corpus], tmp_path / "refused")


def test_the_embedded_model_reads_back_close_to_its_reference_energies() -> None:
    """The shipped model (int8 only) can be continued: its read-back weights give the fp32
    energies its reference.json records, within the int8 weights' rounding."""
    shipped = Path(__file__).resolve().parents[2] / "models" / "electric-minilm"
    recovered, cfg = electric_from_artifact(shipped)
    reference = json.loads((shipped / "reference.json").read_text())["sentences"]
    errors, want = [], []
    for sentence in reference:
        ids = torch.tensor([sentence["ids"]])
        with torch.no_grad():
            got = recovered.energy.eval()(ids, torch.ones_like(ids))[0].numpy()
        errors.append(got - np.asarray(sentence["energies"]))
        want.append(np.asarray(sentence["energies"]))
    rms = float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))
    assert rms < 0.03 * float(np.concatenate(want).std()), rms
    assert cfg.vocab_size == recovered.word_embeddings.num_embeddings


def test_a_narrow_embedding_with_its_projection_reads_back(tiny_tokenizer_path: Path,
                                                           tmp_path: Path) -> None:
    """ELECTRA-small's shape: embeddings narrower than the encoder, and a projection."""
    import dataclasses

    from model_export.model import Electric

    base = build_tiny_electric().cfg
    torch.manual_seed(1)
    narrow = Electric(dataclasses.replace(base, embedding_size=16)).eval()
    folder = tmp_path / "narrow"
    export_artifact(narrow, narrow.cfg, tiny_tokenizer_path, folder, name="n", variants=("fp32",))
    recovered, cfg = electric_from_artifact(folder)
    assert cfg.embedding_size == 16 and recovered.energy.embeddings_project is not None
    assert np.array_equal(energies(recovered.energy), energies(narrow.energy))
