"""Corpus reading, tokenization cache, packing, the held-out split and the batch order."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from model_export.corpus import read_documents
from model_export.data import (
    BatchStream,
    SpecialIds,
    in_speech_form,
    is_heldout,
    load_or_tokenize,
    load_tokenizer,
    pack,
    speech_form,
    split_sentences,
    tokenize_corpora,
)


def write_corpus(path: Path, documents: list[list[str]]) -> Path:
    text = "\n\n".join("\n".join(doc) for doc in documents) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


DOCS = [
    ["the cat sat on the mat", "a dog ran to the old house", "she reads a good book today"],
    ["they were very happy yesterday"],
    ["the children wrote books", "the big red car is not new",
     " ".join(["he said that the bird sat in the tree"] * 6)],  # one sentence longer than max_len
    ["xyzzy quux", "i go", "we went", "you can"],
] + [[f"the {w} sat on the mat", f"a {w} ran"] for w in ("cat", "dog", "bird", "man", "tree")]


@pytest.fixture()
def corpus_file(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "c.txt.gz", DOCS)


def test_read_documents_splits_on_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("a b\nc d\n\n\n  \ne f\n\ng\n")
    assert list(read_documents(path)) == [["a b", "c d"], ["e f"], ["g"]]


def test_gzip_and_plain_text_read_the_same(tmp_path: Path) -> None:
    plain = write_corpus(tmp_path / "c.txt", DOCS)
    packed = write_corpus(tmp_path / "c.txt.gz", DOCS)
    assert list(read_documents(plain)) == list(read_documents(packed)) == DOCS


def test_packing_respects_max_len_sentences_and_documents(corpus_file: Path,
                                                          tiny_tokenizer_path: Path) -> None:
    corpus = tokenize_corpora([corpus_file], load_tokenizer(tiny_tokenizer_path), 0.0)
    max_len = 24
    packed = pack(corpus, max_len)
    sent = corpus.sentence_starts
    doc_of_sentence = np.repeat(np.arange(corpus.num_documents), np.diff(corpus.document_starts))
    sentence_of_token = np.repeat(np.arange(len(sent) - 1), np.diff(sent))

    assert ((packed.ends - packed.starts) <= max_len - 2).all()
    covered = set()
    for start, end in zip(packed.starts, packed.ends):
        first, last = sentence_of_token[start], sentence_of_token[end - 1]
        assert start == sent[first], "a sequence starts at a sentence start"
        assert doc_of_sentence[first] == doc_of_sentence[last], "never across documents"
        if end != sent[last + 1]:  # cut inside a sentence: only a lone over-long one
            assert first == last and end - start == max_len - 2
            assert sent[last + 1] - sent[last] > max_len - 2
        covered.update(range(first, last + 1))
    assert covered == set(range(len(sent) - 1)), "every sentence is used"
    # Greedy: two neighbouring sequences of one document could not have been merged.
    for i in range(len(packed) - 1):
        same_doc = (doc_of_sentence[sentence_of_token[packed.starts[i]]]
                    == doc_of_sentence[sentence_of_token[packed.starts[i + 1]]])
        if same_doc and packed.ends[i] == packed.starts[i + 1]:
            assert packed.ends[i + 1] - packed.starts[i] > max_len - 2


def test_framed_sequences_and_batches(corpus_file: Path, tiny_tokenizer_path: Path) -> None:
    tok = load_tokenizer(tiny_tokenizer_path)
    special = SpecialIds.from_tokenizer(tok)
    packed = pack(tokenize_corpora([corpus_file], tok, 0.0), 16)
    batch = BatchStream(packed, special, batch_size=4, seed=0).batch(0)
    ids, mask, specials = batch.input_ids, batch.attention_mask, batch.special_mask
    assert ids.shape == mask.shape == specials.shape and ids.shape[0] == 4
    assert ids.shape[1] <= 16 and (ids[:, 0] == special.cls).all()
    lengths = mask.sum(-1)
    assert (ids[range(4), lengths - 1] == special.sep).all()
    assert ((ids == special.pad) == (mask == 0)).all()
    assert (specials == ((ids == special.cls) | (ids == special.sep) | (mask == 0))).all()
    assert batch.real_tokens == int(lengths.sum())


def test_heldout_split_is_deterministic(tmp_path: Path, tiny_tokenizer_path: Path) -> None:
    docs = [[f"the cat number {i} sat", f"on mat {i}"] for i in range(400)]
    tok = load_tokenizer(tiny_tokenizer_path)
    a = tokenize_corpora([write_corpus(tmp_path / "a.txt", docs)], tok, 0.1)
    b = tokenize_corpora([write_corpus(tmp_path / "b.txt", docs[::-1])], tok, 0.1)
    assert (a.heldout == b.heldout[::-1]).all(), "by content, not by file or position"
    assert 0.03 < a.heldout.mean() < 0.2
    assert [is_heldout(d, 0.1) for d in docs] == a.heldout.tolist()
    assert not tokenize_corpora([tmp_path / "a.txt"], tok, 0.0).heldout.any()
    packed = pack(a, 32)
    assert packed.subset(True).heldout.all() and not packed.subset(False).heldout.any()
    assert len(packed.subset(True)) + len(packed.subset(False)) == len(packed)


@pytest.mark.parametrize(("line", "spoken"), [
    ("Daniel led the fight , which he had \"abandoned\" -- in 1961.",
     "daniel led the fight which he had abandoned in 1961"),
    ("Don't you know it's Jean-Paul's?", "dont you know its jean-pauls"),
    ("And Cain knew his wife; and she conceived: Enoch!", "and cain knew his wife and she conceived enoch"),
    ("costs $5 & 10% -- or (so) it\u2019s said", "costs 5 10 or so its said"),
    ("...", ""),
])
def test_speech_form_writes_lines_as_asr_output_does(line: str, spoken: str) -> None:
    assert speech_form(line) == spoken


def test_plain_fraction_puts_whole_documents_in_speech_form(tmp_path: Path,
                                                            tiny_tokenizer_path: Path) -> None:
    docs = [[f"The cat, number {i}, sat.", f"On mat {i}!"] for i in range(200)]
    path = write_corpus(tmp_path / "a.txt", docs)
    tok = load_tokenizer(tiny_tokenizer_path)

    def ids(lines: list[str]) -> list[int]:
        return [i for e in tok.encode_batch(lines, add_special_tokens=False) for i in e.ids]

    as_written = tokenize_corpora([path], tok, 0.0)
    assert as_written.tokens.tolist() == ids([line for d in docs for line in d])
    assert tokenize_corpora([path], tok, 0.0, plain_fraction=1.0).tokens.tolist() == ids(
        [speech_form(line) for d in docs for line in d])
    half = tokenize_corpora([path], tok, 0.0, plain_fraction=0.5)
    chosen = [in_speech_form(d, 0.5) for d in docs]
    assert 0.3 < np.mean(chosen) < 0.7
    assert half.tokens.tolist() == ids(
        [speech_form(line) if c else line for d, c in zip(docs, chosen) for line in d])
    # Independent of the held-out hash: speech form is not a property of held-out documents.
    assert [is_heldout(d, 0.5) for d in docs] != chosen


def test_cache_is_reused_and_invalidated(corpus_file: Path, tiny_tokenizer_path: Path,
                                         tmp_path: Path) -> None:
    cache = tmp_path / "run" / "tokens.npz"
    first = load_or_tokenize([corpus_file], tiny_tokenizer_path, cache, 0.1)
    stamp = cache.stat().st_mtime_ns
    again = load_or_tokenize([corpus_file], tiny_tokenizer_path, cache, 0.1)
    assert cache.stat().st_mtime_ns == stamp
    assert (again.tokens == first.tokens).all() and (again.heldout == first.heldout).all()
    assert (again.sentence_starts == first.sentence_starts).all()
    write_corpus(corpus_file, DOCS[:3])
    changed = load_or_tokenize([corpus_file], tiny_tokenizer_path, cache, 0.1)
    assert changed.num_documents == 3
    load_or_tokenize([corpus_file], tiny_tokenizer_path, cache, 0.1, plain_fraction=1.0)
    with np.load(cache, allow_pickle=False) as z:  # a new setting is a new cache
        assert '"plain_fraction": 1.0' in str(z["key"])
    with np.load(cache, allow_pickle=False) as z:  # plain arrays: no pickle needed to read
        assert set(z.files) == {"key", "tokens", "sentence_starts", "document_starts", "heldout",
                                "source"}


def test_batch_order_is_a_function_of_seed_and_step(corpus_file: Path,
                                                    tiny_tokenizer_path: Path) -> None:
    tok = load_tokenizer(tiny_tokenizer_path)
    special = SpecialIds.from_tokenizer(tok)
    packed = pack(tokenize_corpora([corpus_file], tok, 0.0), 16)
    stream = BatchStream(packed, special, batch_size=3, seed=7, bucket=2)
    run = [b.input_ids for _, b in zip(range(12), stream())]
    resumed = [b.input_ids for _, b in zip(range(7), BatchStream(packed, special, 3, 7, bucket=2)(5))]
    for x, y in zip(run[5:], resumed):
        assert (x == y).all()
    other = [b.input_ids for _, b in zip(range(12), BatchStream(packed, special, 3, 8, bucket=2)())]
    assert any(x.shape != y.shape or (x != y).any() for x, y in zip(run, other))
    epoch = np.concatenate(stream.epoch_batches(0))
    assert len(epoch) == len(set(epoch.tolist())) == stream.batches_per_epoch * 3


@pytest.mark.parametrize(("line", "sentences"), [
    ("One sentence only.", ["One sentence only."]),
    ("It rained. We stayed in! Did you?", ["It rained.", "We stayed in!", "Did you?"]),
    ('He said "Stop." Then 3 men came.', ['He said "Stop."', "Then 3 men came."]),
    ("no capital after. so one piece", ["no capital after. so one piece"]),
    ("  spaced.   Out  ", ["spaced.", "Out"]),
])
def test_split_sentences(line: str, sentences: list[str]) -> None:
    assert split_sentences(line) == sentences


def test_paragraph_lines_are_split_so_packing_keeps_their_tail(tmp_path: Path,
                                                               tiny_tokenizer_path: Path) -> None:
    paragraph = " ".join(["The cat sat on the mat."] * 8)  # longer than one sequence
    tok = load_tokenizer(tiny_tokenizer_path)
    corpus = tokenize_corpora([write_corpus(tmp_path / "p.txt", [[paragraph]])], tok, 0.0)
    assert len(corpus.sentence_starts) - 1 == 8
    packed = pack(corpus, 16)
    assert (packed.ends - packed.starts).sum() == len(corpus.tokens)  # nothing dropped


def test_corpus_weights_repeat_and_subsample_whole_corpora(tmp_path: Path,
                                                            tiny_tokenizer_path: Path) -> None:
    tok = load_tokenizer(tiny_tokenizer_path)
    special = SpecialIds.from_tokenizer(tok)
    small = write_corpus(tmp_path / "small.txt", [[f"the {w} sat"] for w in ("cat", "dog")])
    large = write_corpus(tmp_path / "large.txt", [[f"a {w} ran"] for w in "abcdefghijklmnop"])
    packed = pack(tokenize_corpora([small, large], tok, 0.0), 8)
    assert list(np.bincount(packed.source)) == [2, 16]
    stream = BatchStream(packed, special, batch_size=2, seed=3, weights=[3.0, 0.25])
    assert stream.batches_per_epoch == (2 * 3 + 4) // 2
    for epoch in range(3):
        rows = np.concatenate(stream.epoch_batches(epoch))
        assert list(np.bincount(packed.source[rows], minlength=2)) == [6, 4]
        assert sorted(np.bincount(rows[packed.source[rows] == 0])) == [3, 3]
    assert (set(np.concatenate(stream.epoch_batches(0)).tolist())
            != set(np.concatenate(stream.epoch_batches(1)).tolist()))  # a fresh quarter each epoch
    with pytest.raises(ValueError, match="weight 0"):
        BatchStream(packed, special, batch_size=2, seed=3, weights=[0.0, 0.0])
