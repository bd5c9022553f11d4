"""The training half of the transformer track: nbhelpers.core.lm_baseline's schedules and divergence
stop, and nbhelpers.lessons.transformer_training (status, pooled paired comparisons, the pre-LN
against post-LN target, the LR range test on a language model)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from lm_fixtures import tiny_corpus

from nbhelpers.core import lm_baseline as lb
from nbhelpers.core import text
from nbhelpers.core.params import ParameterError
from nbhelpers.lessons import transformer_training as tt
from nbhelpers.techniques import schedules

SMALL = {"context": 16, "width": 16, "depth": 1, "heads": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> text.Corpus:
    """A tiny text of your own (TEXT_PATH), its vocabulary and splits."""
    return tiny_corpus(tmp_path_factory)


def factors(name: str, steps: int, warmup: int) -> list[float]:
    return [lb.schedule_factor(name, s, steps, warmup) for s in range(steps)]


def test_each_schedule_has_its_shape():
    cos, lin, const = (
        factors("cosine", 50, 10),
        factors("linear", 50, 10),
        factors("constant", 50, 10),
    )
    warm = [(s + 1) / 10 for s in range(10)]
    assert cos[:10] == lin[:10] == const[:10] == pytest.approx(warm)
    assert cos == [lb.lr_factor(s, 50, 10) for s in range(50)]  # the default is unchanged
    assert const[10:] == [1.0] * 40
    assert lin[10] == 1.0 and lin[-1] == pytest.approx(0.1)
    assert np.allclose(np.diff(lin[10:]), -0.9 / 39)  # a straight line from the peak to the floor
    assert factors("constant", 5, 0) == [1.0] * 5


@pytest.mark.parametrize("steps", [10, 37, 200])
def test_one_cycle_is_torchs_one_cycle_rate(steps: int):
    """The factor times the peak is OneCycleLR's rate at every step (traced by
    techniques.schedules)."""
    torch_lrs = schedules.lr_sequence(
        schedules.make_schedule("onecycle", 1, steps, 0.02, max_lr=0.02), 1, steps, 0.02
    )
    mine = [0.02 * f for f in factors("onecycle", steps, 0)]
    assert mine == pytest.approx(torch_lrs, rel=1e-12)
    assert max(mine) == pytest.approx(0.02, rel=1e-3) and mine[0] == pytest.approx(0.02 / 25)


def test_bad_schedules_are_refused():
    with pytest.raises(ParameterError, match="schedule"):
        lb.schedule_factor("step", 0, 10, 0)
    with pytest.raises(ParameterError, match="warmup_steps"):
        lb.schedule_factor("onecycle", 0, 10, 3)


def test_training_applies_the_schedule(corpus, monkeypatch):
    monkeypatch.setitem(lb.LM_RECIPE, "eval_every", 5)
    torch.manual_seed(0)
    m = lb.CharTransformer(corpus.vocab.size, **SMALL)
    h = lb.train_lm(m, corpus, 20, 4, 0.01, 0, schedule="linear")
    want = [0.01 * lb.schedule_factor("linear", s - 1, 20, 0) for s in h.step]
    assert list(h.step) == [5, 10, 15, 20] and h.lr.tolist() == pytest.approx(want, rel=1e-12)
    assert not lb.diverged(h)


def test_a_nan_loss_stops_the_run(corpus, monkeypatch):
    monkeypatch.setitem(lb.LM_RECIPE, "eval_every", 5)
    torch.manual_seed(0)
    m = lb.CharTransformer(corpus.vocab.size, **SMALL)
    calls = []

    def poison(module, inputs, output):
        calls.append(1)
        return output * math.nan if len(calls) >= 8 else output

    m.head.register_forward_hook(poison)
    h = lb.train_lm(m, corpus, 50, 4, 0.01, 0)
    # the validation pass after step 5 is the 6th call: steps 6 and 7 make the 7th and 8th
    assert list(h.step) == [5, 7] and len(calls) == 8
    assert lb.diverged(h) and math.isnan(h.train_bits.iloc[-1])
    assert not lb.diverged(h.iloc[:-1])


def test_the_schedule_is_in_the_cache_key_only_when_not_the_default(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path / "cache"))
    a = lb.get_lm_baseline(corpus, 0, SMALL, steps=10, batch_size=4, warmup_steps=0)
    b = lb.get_lm_baseline(corpus, 0, SMALL, 10, 4, warmup_steps=0, schedule="constant")
    c = lb.get_lm_baseline(corpus, 0, SMALL, 10, 4, warmup_steps=0, schedule="cosine")
    assert "schedule" not in a.config and b.config["schedule"] == "constant"
    assert not b.from_cache and c.from_cache
    with pytest.raises(ParameterError, match="warmup_steps"):
        lb.get_lm_baseline(corpus, 0, SMALL, 10, 4, warmup_steps=2, schedule="onecycle")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def run(bpc: float | None, n: int = 400, seed: int = 0, vocab: int = 8, offset: int = 0) -> tt.Run:
    """A synthetic run: losses ``bpc`` plus a wave (None: diverged)."""
    model = lb.CharTransformer(vocab, context=4, width=4, depth=1, heads=1)
    wave = 0.3 * np.sin(np.arange(n) / 7 + offset)
    losses = None if bpc is None else bpc + wave
    hist = pd.DataFrame({"step": [1], "lr": [0.1], "train_bits": [1.0 if bpc else math.nan],
                         "val_bits": [bpc if bpc else math.nan], "seconds": [0.1]})  # fmt: skip
    return tt.Run(seed, model, hist, losses, True)


def test_status_and_pooled_comparison():
    unigram = 3.0
    ref, good, bad = [run(2.0), run(2.2, offset=1)], [run(1.5), run(1.6)], [run(2.0), run(None)]
    assert tt.status(ref, unigram) == "trained" and tt.status(bad, unigram) == "diverged"
    assert tt.status([run(3.1), run(3.0)], unigram) == "failed"
    assert np.allclose(tt.pooled(ref), (ref[0].losses + ref[1].losses) / 2)
    table = tt.compare({"ref": ref, "good": good, "bad": bad}, "ref", unigram, block=20)
    assert table.loc["ref", "change"] == 0.0 and table.loc["good", "verdict"] == "better"
    assert table.loc["good", "change"] == pytest.approx(1.55 - 2.1, abs=0.02)
    assert table.loc["bad", "verdict"] == "diverged" and math.isnan(table.loc["bad", "change"])


def test_the_placement_target_judges_the_strongest_rate():
    unigram = 3.0
    cells = {
        ("pre", False, 0.1): [run(2.5), run(2.5)], ("post", False, 0.1): [run(2.6), run(2.6)],
        ("pre", False, 1.0): [run(2.4), run(2.4)], ("post", False, 1.0): [run(None), run(2.0)],
        ("pre", False, 9.0): [run(3.5), run(3.5)], ("post", False, 9.0): [run(None), run(None)],
    }  # fmt: skip
    rows = tt.placement_rows(cells, [0.1, 1.0, 9.0], unigram, block=20)
    assert rows.outcome.tolist() == ["worse", "fails", "pre-LN does not train"]
    assert rows.separated.tolist()[:2] == [True, False]
    # a diverged post-LN model counts as the uniform guess, log2(8) = 3 bits on every character
    assert rows.change.iloc[1] == pytest.approx((3.0 + 2.0) / 2 - 2.4, abs=0.02)
    t, lr = tt.placement_target(rows)
    assert lr == 1.0 and t["met"] and "lr 1" in t["name"] and t["low"] > 0
    t2, lr2 = tt.placement_target(rows.iloc[[0]])  # only the rate where post-LN is worse
    assert lr2 == 0.1 and t2["met"]
    same = {("pre", False, 0.1): [run(2.5), run(2.5)],
            ("post", False, 0.1): [run(2.5, offset=2), run(2.5, offset=4)]}  # fmt: skip
    t3, _ = tt.placement_target(tt.placement_rows(same, [0.1], unigram, block=20))
    assert not t3["met"] and t3["low"] < 0 < t3["high"]
    t4, lr4 = tt.placement_target(rows.iloc[[2]])
    assert not t4["met"] and math.isnan(lr4) and "no lr" in t4["name"]


def test_unigram_bits_is_the_cross_entropy_of_the_training_frequencies(corpus):
    y = corpus.ids("test")[:50].view(1, -1)
    counts = np.bincount(corpus.ids("train").numpy(), minlength=corpus.vocab.size) + 1.0
    want = -np.log2(counts[y.flatten().numpy()] / counts.sum()).mean()
    assert tt.unigram_bits(corpus, y) == pytest.approx(want, rel=1e-12)


def test_lm_range_test_raises_the_rate_and_is_cached(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    m = lb.CharTransformer(corpus.vocab.size, **SMALL)
    before = [p.clone() for p in m.parameters()]
    cfg = {"steps": 30, "lr_min": 1e-4, "lr_max": 1.0, "divisor": 10.0}
    test, suggestion, hit = tt.lm_range_test(m, corpus, 4, cfg, 0.1)
    assert not hit and len(test) >= 10 and test.lr.is_monotonic_increasing
    assert test.lr.iloc[0] == pytest.approx(1e-4)
    assert test.loss.iloc[0] == pytest.approx(math.log2(corpus.vocab.size), abs=0.3)  # in bits
    assert suggestion["max_lr"] == pytest.approx(suggestion["lr_min_loss"] / 10)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))  # a copy trained
    again, _, hit2 = tt.lm_range_test(m, corpus, 4, cfg, 0.1)
    assert hit2 and again.equals(test)


@pytest.mark.parametrize(
    "override,name",
    [
        ({"NORMS": ["groupnorm"]}, "NORMS"),
        ({"LRS": [0.001, 0.0]}, "LRS"),
        ({"SCHEDULES": ["step"]}, "SCHEDULES"),
        ({"WARMUP_STEPS": 2000}, "WARMUP_STEPS"),
        ({"HEADS": 3}, "HEADS"),
        ({"SEEDS": 0}, "SEEDS"),
        (
            {"RANGE_TEST": {"steps": 5, "lr_min": 1e-5, "lr_max": 1.0, "divisor": 10.0}},
            "RANGE_TEST",
        ),
        ({"TEXT_PATH": "/no/such/file.txt"}, "TEXT_PATH"),
        ({"BLOCK": 10**9}, "BLOCK"),
    ],
)
def test_notebook_13_refuses_bad_input_in_validation(override: dict, name: str, tmp_path):
    """Notebook 13 stops in its validation cell, before any training, naming the parameter."""
    from notebook_runner import ROOT, assert_fails_in_validation

    nb = ROOT / "notebooks" / "13_transformer_training.ipynb"
    assert_fails_in_validation(nb, tmp_path, name, **override)
