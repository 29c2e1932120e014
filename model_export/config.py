"""Model configuration: frozen dataclasses with named presets.

Module names in model.py mirror Hugging Face BERT / ELECTRA so that warm starts and imports are
plain renames; the fields here use the same meanings as their configs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 30522
    """WordPiece vocabulary size; must match tokenizer.json."""
    hidden: int = 384
    """Width of the energy model's encoder."""
    layers: int = 6
    """Transformer layers in the energy model."""
    heads: int = 12
    """Attention heads in the energy model; must divide ``hidden``."""
    intermediate: int = 1536
    """Feed-forward width of the energy model."""
    embedding_size: int = 0
    """Token embedding width; 0 means ``hidden``. ELECTRA-small uses 128 with a projection."""
    max_positions: int = 512
    """Learned absolute positions; the longest input in tokens, specials included."""
    type_vocab_size: int = 2
    """Segment embeddings (kept for checkpoint compatibility; Electric always uses segment 0)."""
    dropout: float = 0.1
    """Hidden and attention dropout in training."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon, as in BERT."""
    pad_id: int = 0
    """Token id of [PAD]."""
    noise_hidden: int = 96
    """Width of each noise tower: about 1/4 of ``hidden`` (paper, section 4)."""
    noise_layers: int = 3
    """Layers per noise tower."""
    noise_heads: int = 4
    """Attention heads per noise tower; must divide ``noise_hidden``."""
    noise_intermediate: int = 0
    """Feed-forward width of the noise towers; 0 means 4 × ``noise_hidden``."""

    def __post_init__(self) -> None:
        if self.embedding_size == 0:
            object.__setattr__(self, "embedding_size", self.hidden)
        if self.noise_intermediate == 0:
            object.__setattr__(self, "noise_intermediate", 4 * self.noise_hidden)
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.noise_hidden % self.noise_heads:
            raise ValueError(
                f"noise_hidden {self.noise_hidden} is not divisible by noise_heads {self.noise_heads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        return cls(**data)


MODEL_PRESETS: dict[str, ModelConfig] = {
    # For tests: a few thousand parameters, runs in milliseconds.
    "tiny": ModelConfig(vocab_size=1000, hidden=32, layers=2, heads=2, intermediate=64,
                        max_positions=64, noise_hidden=16, noise_layers=1, noise_heads=2),
    # all-MiniLM-L6-v2's shape, the warm start this project ships with.
    "minilm": ModelConfig(),
    # BERT-base / ELECTRA-base shape, for GPUs.
    "base": ModelConfig(hidden=768, layers=12, heads=12, intermediate=3072,
                        noise_hidden=192, noise_layers=3, noise_heads=3),
}
