"""Tokenization: offsets into the original string, specials flagged, truncation and limits."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest

from service.tokenization import SentenceTokenizer, TooLong


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_path: Path) -> SentenceTokenizer:
    return SentenceTokenizer.from_file(tiny_tokenizer_path, max_length=16)


def test_specials_are_in_the_input_but_not_scored(tok: SentenceTokenizer) -> None:
    (enc,) = tok.encode(["the cat sat"], truncate=False)
    assert enc.ids.dtype == np.int64
    assert enc.ids[0] == 2 and enc.ids[-1] == 3  # [CLS] ... [SEP]
    assert enc.scored.tolist() == [False, True, True, True, False]
    assert enc.tokens == ["the", "cat", "sat"]
    assert enc.num_tokens == 3 and enc.length == 5 and not enc.truncated


@pytest.mark.parametrize("text", ["Café ÜBER the CAT", "naïve résumé", "  THE\tdog  ",
                                  "a 😀 b", "Straße"])
def test_offsets_index_the_original_string(tok: SentenceTokenizer, text: str) -> None:
    (enc,) = tok.encode([text], truncate=False)
    assert len(enc.offsets) == enc.num_tokens
    for token, (start, end) in zip(enc.tokens, enc.offsets):
        assert 0 <= start < end <= len(text)
        if token != "[UNK]":
            piece = token.removeprefix("##")
            # Lowercased and accent-stripped by the normaliser, yet spanning the original text.
            plain = "".join(c for c in unicodedata.normalize("NFD", text[start:end].lower())
                            if not unicodedata.combining(c))
            assert plain == piece, (text, token, text[start:end])


def test_uppercase_and_accents_map_back(tok: SentenceTokenizer) -> None:
    text = "Café ÜBER"
    (enc,) = tok.encode([text], truncate=False)
    assert [text[s:e] for s, e in enc.offsets] == ["C", "a", "f", "é", "Ü", "B", "E", "R"]


def test_literal_special_tokens_are_plain_text(tok: SentenceTokenizer) -> None:
    (enc,) = tok.encode(["the [SEP] cat [PAD]"], truncate=False)
    assert enc.ids.tolist().count(3) == 1  # only the real [SEP] at the end
    assert 0 not in enc.ids.tolist()
    assert "[SEP]" not in enc.tokens


def test_too_long_is_refused_with_value_and_limit(tok: SentenceTokenizer) -> None:
    with pytest.raises(TooLong) as refused:
        tok.encode(["the cat", "a " * 20], truncate=False)
    assert refused.value.index == 1
    assert refused.value.num_tokens == 20 and refused.value.max_tokens == 14
    assert "sentences[1] has 20 tokens" in refused.value.message and "14" in refused.value.message
    assert "lists[0].hypotheses[3]" in refused.value.at("lists[0].hypotheses[3]").message


def test_truncate_keeps_the_specials(tok: SentenceTokenizer) -> None:
    text = "the " * 20
    (enc,) = tok.encode([text], truncate=True)
    assert enc.truncated and enc.length == 16 and enc.num_tokens == 14
    assert enc.ids[0] == 2 and enc.ids[-1] == 3
    assert enc.offsets[-1] == (52, 55)


def test_empty_text_has_no_scored_tokens(tok: SentenceTokenizer) -> None:
    (enc,) = tok.encode([""], truncate=False)
    assert enc.num_tokens == 0 and enc.tokens == [] and enc.length == 2
