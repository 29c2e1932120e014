"""Import of a Hugging Face ELECTRA discriminator: energies must equal its logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from model_export.hf_import import import_electra_discriminator

# embedding_size < hidden, so that embeddings_project is exercised.
TINY_ELECTRA: dict[str, int] = {
    "vocab_size": 214, "embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its init, so that a tensor left unloaded shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.fixture(scope="module")
def electra_folder(tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[Path, transformers.ElectraForPreTraining]:
    torch.manual_seed(0)
    disc = transformers.ElectraForPreTraining(transformers.ElectraConfig(**TINY_ELECTRA))
    perturb_(disc, seed=1)
    folder = tmp_path_factory.mktemp("electra-tiny-discriminator")
    disc.save_pretrained(folder, safe_serialization=True)
    return folder, disc.eval()


def test_energies_equal_discriminator_logits(
        electra_folder: tuple[Path, transformers.ElectraForPreTraining]) -> None:
    folder, disc = electra_folder
    model, cfg, facts = import_electra_discriminator(folder)

    assert (cfg.embedding_size, cfg.hidden) == (16, 32)
    assert model.energy.embeddings_project is not None
    assert not model.training
    assert facts["source"] == folder.name
    assert (facts["model_type"], facts["hidden"], facts["layers"]) == ("electra", 32, 2)
    assert facts["tensors_unused"] == []

    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(5, TINY_ELECTRA["vocab_size"], (3, 10), generator=gen)
    mask = torch.zeros_like(ids)
    for row, length in enumerate((10, 6, 3)):
        mask[row, :length] = 1
    ids = ids * mask
    with torch.no_grad():
        energies = model.energy(ids, mask)  # (B, T)
        logits = disc(input_ids=ids, attention_mask=mask).logits  # (B, T)
    keep = mask.bool()
    torch.testing.assert_close(energies[keep], logits[keep], atol=1e-5, rtol=0)


def test_a_headless_electra_is_refused(tmp_path: Path) -> None:
    transformers.ElectraModel(transformers.ElectraConfig(**TINY_ELECTRA)).save_pretrained(
        tmp_path, safe_serialization=True)
    with pytest.raises(ValueError, match="no complete discriminator head"):
        import_electra_discriminator(tmp_path)


def test_a_bert_folder_is_refused(tmp_path: Path) -> None:
    config = transformers.BertConfig(vocab_size=214, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64)
    transformers.BertModel(config).save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(ValueError, match="ELECTRA discriminator"):
        import_electra_discriminator(tmp_path)
