"""Tokenization: offsets into the original string, specials flagged, truncation and limits."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest

from service import tokenization
from service.errors import too_long
from service.tokenization import SentenceTokenizer, TooLong, TooManyChars, _chunks


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
    assert "lists[0].hypotheses[3]" in too_long(refused.value, "lists[0].hypotheses[3]").message


def test_truncate_keeps_the_specials(tok: SentenceTokenizer) -> None:
    text = "the " * 20
    (enc,) = tok.encode([text], truncate=True)
    assert enc.truncated and enc.length == 16 and enc.num_tokens == 14
    assert enc.ids[0] == 2 and enc.ids[-1] == 3
    assert enc.offsets[-1] == (52, 55)


def test_empty_text_has_no_scored_tokens(tok: SentenceTokenizer) -> None:
    (enc,) = tok.encode([""], truncate=False)
    assert enc.num_tokens == 0 and enc.tokens == [] and enc.length == 2


def test_texts_over_max_chars_are_refused_before_tokenizing(tiny_tokenizer_path: Path) -> None:
    tok = SentenceTokenizer.from_file(tiny_tokenizer_path, max_length=16, max_chars=40)
    assert tok.encode(["the cat " * 5], truncate=False)[0].num_tokens == 10  # 40 characters
    with pytest.raises(TooManyChars) as refused:
        tok.encode(["the cat", "!" * 41], truncate=False)
    assert refused.value.index == 1
    assert "sentences[1] has 41 characters; at most 40" in refused.value.message
    assert "hypotheses[2] has 41" in too_long(refused.value, "hypotheses[2]").message
    assert isinstance(refused.value, TooLong)  # handlers that name the place catch both


def test_the_default_char_bound_follows_the_model(tok: SentenceTokenizer) -> None:
    assert tok.max_chars == tokenization.CHARS_PER_TOKEN * tok.max_tokens


@pytest.mark.parametrize("text", ["the cat sat on the mat " * 10, "the " * 12 + "catcatcat dog " * 3,
                                  "!" * 100, "the\tcat\nsat " * 10])
def test_cutting_to_max_chars_keeps_the_truncated_tokens(tiny_tokenizer_path: Path,
                                                          text: str) -> None:
    full = SentenceTokenizer.from_file(tiny_tokenizer_path, max_length=16, max_chars=10_000)
    cut = SentenceTokenizer.from_file(tiny_tokenizer_path, max_length=16, max_chars=70)
    assert len(text) > cut.max_chars
    (want,), (got,) = full.encode([text], truncate=True), cut.encode([text], truncate=True)
    assert got.tokens == want.tokens and got.offsets == want.offsets and got.truncated
    assert np.array_equal(got.ids, want.ids)


def test_chunked_encoding_equals_one_call(tok: SentenceTokenizer, monkeypatch) -> None:
    texts = [f"the cat {'sat ' * (i % 5)}on the mat" for i in range(40)]
    whole = tok.encode(texts, truncate=True)
    monkeypatch.setattr(tokenization, "CHUNK_CHARS", 30)
    chunked = tok.encode(texts, truncate=True)
    assert [e.tokens for e in chunked] == [e.tokens for e in whole]
    assert [e.offsets for e in chunked] == [e.offsets for e in whole]
    with pytest.raises(TooLong) as refused:  # the index is the request's, not the chunk's
        tok.encode(texts[:7] + ["a " * 20], truncate=False)
    assert refused.value.index == 7


def test_chunks_cover_every_item_once() -> None:
    assert _chunks([], 10) == []
    assert _chunks([3, 3, 3, 20, 1], 6) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert _chunks([5, 5], 10) == [(0, 2)]


def test_a_text_cut_to_max_chars_is_flagged_truncated(tiny_tokenizer_path: Path) -> None:
    tok = SentenceTokenizer.from_file(tiny_tokenizer_path, max_length=16, max_chars=20)
    (enc,) = tok.encode(["the cat sat on the mat"], truncate=True)  # 22 characters, 6 tokens
    assert enc.truncated and enc.tokens == ["the", "cat", "sat", "on", "the"]
