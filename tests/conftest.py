"""Shared fixtures: a tiny WordPiece tokenizer and sentences, made at test time (no downloads)."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = """the a an of to in and is was on at it he she they we you i that this with for as
cat dog mat sat sits ran runs house tree bird car red big small old new good bad man woman
child children book books read reads wrote writes quickly slowly today yesterday very not
be are were has have had do does did will would can could said says go goes went""".split()

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


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    build_tiny_tokenizer().save(str(path))
    return path


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(SENTENCES)
