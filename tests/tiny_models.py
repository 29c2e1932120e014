"""Tiny test models made at test time: a WordPiece tokenizer and a seeded random Electric.

A plain module (not a conftest) so that test files can import the builders by a unique name.
"""

from __future__ import annotations

import string

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "an", "of", "to", "in", "and", "is", "was", "on", "at", "it", "he", "she", "they", "we", "you", "i", "that", "this", "with", "for", "as", "cat", "dog", "mat", "sat", "sits", "ran", "runs", "house", "tree", "bird", "car", "red", "big", "small", "old", "new", "good", "bad", "man", "woman", "child", "children", "book", "books", "read", "reads", "wrote", "writes", "quickly", "slowly", "today", "yesterday", "very", "not", "be", "are", "were", "has", "have", "had", "do", "does", "did", "will", "would", "can", "could", "said", "says", "go", "goes", "went"]

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran to the old house",
    "she reads a good book today",
    "they were very happy yesterday",
    "the children wrote books",
    "xyzzy quux",
    "the big red car is not new",
    "he said that the bird sat in the tree",
]


def build_tiny_tokenizer() -> Tokenizer:
    """An uncased BERT-style WordPiece tokenizer whose vocabulary covers any ASCII text."""
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab_list = SPECIALS + pieces + ["##" + p for p in pieces] + WORDS
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    return tok


def build_tiny_electric(vocab_size: int = 214, seed: int = 0):
    """A seeded random tiny Electric whose energies and attention are far from flat.

    BERT's N(0, 0.02) initialisation gives near-uniform attention and energies around 1e-3,
    which would let a parity or padding test pass by accident; wider weights make both matter.
    torch is imported here, not at module level, so service tests run without it.
    """
    import dataclasses

    import torch

    from model_export.config import MODEL_PRESETS
    from model_export.model import Electric

    cfg = dataclasses.replace(MODEL_PRESETS["tiny"], vocab_size=vocab_size, max_positions=64)
    torch.manual_seed(seed)
    model = Electric(cfg).eval()
    with torch.no_grad():
        for module in model.energy.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(std=0.2)
                module.bias.normal_(std=0.1)
    return model


def encode_padded(sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (B, T) ids and mask from the tiny tokenizer, as the service builds them."""
    encodings = build_tiny_tokenizer().encode_batch(sentences)
    T = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), T), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(encodings):
        ids[i, :len(e.ids)] = e.ids
        mask[i, :len(e.ids)] = 1
    return ids, mask
