"""The plain-Python path for printable ASCII gives what the tokenizers library gives."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer, normalizers

from service.tokenization import SentenceTokenizer, TooLong
from service.wordpiece import CACHE_WORD_CHARS, AsciiWordPiece

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "electric-minilm" / "tokenizer.json"

EDGES = ["", " ", "   ", "[SEP]", "[cls] [MASK] x", "a" * 100, "a" * 101, "qzxjkvqqwpf",
         "don't", "U.S.A. 3.14 $5", "x_y~z`w", "Hello,World!!", "  leading and trailing  ",
         "MiXeD CaSe WoRdS", "supercalifragilisticexpialidocious " * 3, "a ##ing ###",
         "ÄÖ naïve", "tab\there", "line\nbreak", "日本語 text", "zero\u200bwidth", "\x00\x07"]


def _texts(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    printable = string.printable[:95]  # U+0020 to U+007E
    words = ["the", "Electric", "model", "scores", "unbelievably", "tokenization", "x",
             "re-ranking", "n-best", "ASR", "2026", "O'Neill", "e-mail", "(see", "above)."]
    texts = list(EDGES)
    texts += ["".join(rng.choice(printable) for _ in range(rng.randint(0, 80)))
              for _ in range(1500)]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(500)]
    return texts


def _pair(path: Path, max_length: int) -> tuple[SentenceTokenizer, SentenceTokenizer]:
    fast = SentenceTokenizer.from_file(path, max_length)
    library = SentenceTokenizer.from_file(path, max_length)
    library._ascii = None
    assert fast._ascii is not None
    return fast, library


def _same(fast: SentenceTokenizer, library: SentenceTokenizer, texts: list[str],
          truncate: bool = True) -> None:
    for text in texts:
        (a,), (b,) = fast.encode([text], truncate), library.encode([text], truncate)
        assert a.ids.dtype == b.ids.dtype
        assert a.ids.tolist() == b.ids.tolist(), text
        assert a.scored.tolist() == b.scored.tolist(), text
        assert a.tokens == b.tokens, text
        assert [tuple(o) for o in a.offsets] == [tuple(o) for o in b.offsets], text
        assert a.truncated == b.truncated, text


@pytest.mark.parametrize("which", ["shipped", "tiny"])
def test_ids_tokens_offsets_match_the_library(which: str, tiny_tokenizer_path: Path) -> None:
    path = SHIPPED if which == "shipped" else tiny_tokenizer_path
    _same(*_pair(path, 512), _texts())


def test_too_long_texts_are_cut_or_refused_as_by_the_library() -> None:
    fast, library = _pair(SHIPPED, 12)  # 10 scored tokens
    _same(fast, library, _texts(1)[:400])
    text = "one two three four five six seven eight nine ten eleven"
    with pytest.raises(TooLong) as got:
        fast.encode(["short", text], truncate=False)
    assert (got.value.index, got.value.num_tokens, got.value.max_tokens) == (1, 11, 10)


def test_a_batch_mixing_both_paths_keeps_its_order() -> None:
    fast, library = _pair(SHIPPED, 512)
    texts = ["plain words", "café au lait", "", "more plain words", "日本", "end."]
    got, want = fast.encode(texts, True), library.encode(texts, True)
    assert [e.tokens for e in got] == [e.tokens for e in want]
    assert [e.ids.tolist() for e in got] == [e.ids.tolist() for e in want]


def test_long_words_are_not_cached() -> None:
    tokenizer = Tokenizer.from_file(str(SHIPPED))
    assert AsciiWordPiece.of(tokenizer) is None  # "[SEP]" in a text would be the control token
    tokenizer.encode_special_tokens = True
    fast = AsciiWordPiece.of(tokenizer)
    assert fast is not None
    word = "a" * (CACHE_WORD_CHARS + 1)
    assert fast.encode(f"{word} b", 512) is not None
    assert "b" in fast._cache and word not in fast._cache


def test_other_pipelines_use_the_library(tiny_tokenizer_path: Path) -> None:
    with_word = Tokenizer.from_file(str(tiny_tokenizer_path))
    with_word.add_tokens([AddedToken("electric", special=False)])
    assert AsciiWordPiece.of(with_word) is None
    cased = Tokenizer.from_file(str(tiny_tokenizer_path))
    cased.normalizer = normalizers.BertNormalizer(lowercase=False)
    assert AsciiWordPiece.of(cased) is None
