"""Distillation of the character language model (nbhelpers.techniques.distillation.sequence, the
loss hook of core.lm_baseline.train_lm, nbhelpers.lessons.transformer_distillation) and notebook
14's bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lm_fixtures import tiny_corpus

from nbhelpers.core import lm_baseline as lb
from nbhelpers.core import text
from nbhelpers.core.params import ParameterError
from nbhelpers.core.transformer import CharTransformer
from nbhelpers.lessons import transformer_distillation as td
from nbhelpers.techniques.distillation import sequence as seq

SMALL = {"context": 16, "width": 16, "depth": 1, "heads": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> text.Corpus:
    """A tiny text of your own (TEXT_PATH), its vocabulary and splits."""
    return tiny_corpus(tmp_path_factory)


def model(corpus: text.Corpus, seed: int = 0, **args) -> CharTransformer:
    torch.manual_seed(seed)
    return CharTransformer(corpus.vocab.size, **{**SMALL, **args})


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- the loss -------------------------------------------------------------------------------


def test_the_loss_is_hintons_per_position_written_out():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g) * 2
    y = torch.randint(0, 7, (3, 5), generator=g)
    T, alpha = 3.0, 0.7
    p_t = torch.softmax(zt / T, -1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(zs / T, -1))).sum(-1)  # (3, 5)
    ce = -torch.log_softmax(zs, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (3, 5)
    by_hand = (alpha * T * T * kl + (1 - alpha) * ce).mean()
    got = seq.sequence_hinton_loss(zs, zt, y, T, alpha)
    assert got.shape == () and torch.allclose(got, by_hand, atol=1e-6), (got, by_hand)


def test_alpha_zero_is_cross_entropy_and_a_perfect_student_costs_nothing():
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(2, 4, 6, generator=g), torch.randint(0, 6, (2, 4), generator=g)
    ce = F.cross_entropy(z.flatten(0, 1), y.flatten())
    assert torch.equal(seq.sequence_hinton_loss(z, torch.zeros_like(z), y, 2.0, 0.0), ce)
    assert abs(float(seq.sequence_hinton_loss(z, z.clone(), y, 4.0, 1.0))) < 1e-6


def test_the_loss_refuses_a_teacher_of_another_vocabulary_and_bad_settings():
    z, y = torch.zeros(2, 4, 6), torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ParameterError, match="teacher"):
        seq.sequence_hinton_loss(z, torch.zeros(2, 4, 7), y)
    with pytest.raises(ParameterError, match="temperature"):
        seq.sequence_hinton_loss(z, z, y, temperature=0.0)
    with pytest.raises(ParameterError, match="alpha"):
        seq.teacher_loss_fn(torch.nn.Identity(), 2.0, 1.5)


# --- training with a teacher ------------------------------------------------------------------


def test_a_cross_entropy_loss_fn_trains_exactly_as_the_default(corpus):
    a, b = model(corpus), model(corpus)
    ha = lb.train_lm(a, corpus, 12, 4, 0.01, 2, seed=3)
    hb = lb.train_lm(
        b,
        corpus,
        12,
        4,
        0.01,
        2,
        seed=3,
        loss_fn=lambda z, x, y: F.cross_entropy(z.flatten(0, 1), y.flatten()),
    )
    assert weights_equal(a, b) and ha.val_bits.tolist() == hb.val_bits.tolist()


def test_alpha_zero_distillation_is_the_student_alone_exactly(corpus):
    alone, distilled, teacher = model(corpus), model(corpus), model(corpus, seed=5, width=32)
    lb.train_lm(alone, corpus, 12, 4, 0.01, 2, seed=3)
    seq.train_distilled(distilled, teacher, corpus, 12, 2.0, 0.0, 4, 0.01, 2, seed=3)
    assert weights_equal(alone, distilled)


def test_the_teacher_sees_the_students_batches_and_changes_what_it_learns(corpus):
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner, self.context = inner, inner.context

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return self.inner(x)

    teacher = Recording(model(corpus, seed=5, width=32))
    alone, distilled = model(corpus), model(corpus)
    lb.train_lm(alone, corpus, 6, 4, 0.01, 2, seed=3)
    seq.train_distilled(distilled, teacher, corpus, 6, 2.0, 0.9, 4, 0.01, 2, seed=3)
    gen = torch.Generator().manual_seed(3)
    batches = [text.random_windows(corpus.ids("train"), 16, 4, gen)[0] for _ in range(6)]
    assert len(seen) == 6 and all(torch.equal(s, b) for s, b in zip(seen, batches))
    assert not teacher.training and not weights_equal(alone, distilled)


def test_a_teacher_with_a_shorter_context_is_refused_before_training(corpus):
    student, teacher = model(corpus), model(corpus, context=8)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ParameterError, match="teacher"):
        seq.train_distilled(student, teacher, corpus, 5, 2.0, 0.5, 4)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


# --- the share of the gap closed ------------------------------------------------------------


def losses(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alone = 2.0 + rng.gamma(2.0, 0.5, n)
    teacher = alone - 0.3 + rng.normal(0, 0.4, n)  # better by 0.3 on average, noisy per character
    return alone, teacher


def test_the_gap_interval_resamples_the_same_blocks_for_the_three_models():
    alone, teacher = losses()
    distilled = alone - 0.4 * (alone - teacher)  # per character: 0.4 of the gap closed
    g = seq.gap_closed_interval(alone, distilled, teacher, block_length=50, n_boot=500)
    # the ratio of resampled means is 0.4 in every resample only when both use the same blocks
    assert g["gap_closed"] == pytest.approx(0.4, abs=1e-12)
    assert g["low"] == pytest.approx(0.4, abs=1e-9) and g["high"] == pytest.approx(0.4, abs=1e-9)
    assert g["gap"] == pytest.approx(float(np.mean(alone - teacher)))
    assert g["gap_resolved"] and g["n"] == 3000 and g["block_length"] == 50


def test_the_gap_interval_contains_the_estimate_and_widens_with_noise():
    alone, teacher = losses()
    rng = np.random.default_rng(1)
    distilled = alone - 0.5 * (alone - teacher) + rng.normal(0, 0.5, len(alone))
    g = seq.gap_closed_interval(alone, distilled, teacher, block_length=50, n_boot=500)
    assert g["low"] < g["gap_closed"] < g["high"] and g["high"] - g["low"] > 0.05
    closed = (alone.mean() - distilled.mean()) / (alone.mean() - teacher.mean())
    assert g["gap_closed"] == pytest.approx(closed)


def test_no_gap_gives_no_share_and_bad_input_is_refused():
    alone, _ = losses()
    same = seq.gap_closed_interval(alone, alone - 0.1, alone + 0.05, n_boot=200)
    assert np.isnan(same["gap_closed"]) and np.isnan(same["low"]) and not same["gap_resolved"]
    with pytest.raises(ParameterError, match="teacher"):
        seq.gap_closed_interval(alone, alone, alone[:-1])
    with pytest.raises(ParameterError, match="distilled"):
        seq.gap_closed_interval(alone, [np.nan] * len(alone), alone)


# --- the lesson -------------------------------------------------------------------------------


def test_the_distilled_student_is_cached_and_starts_where_the_student_alone_does(
    corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path))
    teacher = lb.get_lm_baseline(corpus, 0, {**SMALL, "width": 32}, 8, 4, warmup_steps=2)
    alone = lb.get_lm_baseline(corpus, 0, SMALL, 8, 4, warmup_steps=2)
    same, hist, hit = td.distilled_student(alone, teacher, 2.0, 0.0)
    assert not hit and weights_equal(same, alone.model) and len(hist) == 1
    m1, _, _ = td.distilled_student(alone, teacher, 2.0, 0.5)
    m2, _, hit2 = td.distilled_student(alone, teacher, 2.0, 0.5)
    assert hit2 and weights_equal(m1, m2) and not weights_equal(m1, alone.model)
    assert not td.distilled_student(alone, teacher, 4.0, 0.5)[2]  # another temperature: trained
    sizes = td.size_table({"teacher": teacher.model, "student": alone.model}, "teacher")
    assert sizes.loc["teacher", "share"] == 1.0 and sizes.loc["student", "width"] == 16
    assert sizes.loc["student", "parameters"] < sizes.loc["teacher", "parameters"]


def test_choosing_the_temperature_and_the_target_row():
    assert td.choose_temperature({4.0: 2.1, 1.0: 2.2, 2.0: 2.1}) == 2.0  # tie: the lower one
    alone, teacher = losses()
    loss = {
        "teacher": teacher,
        "alone": alone,
        "d": alone - 0.6 * (alone - teacher),
        "e": alone - 0.2 * (alone - teacher),
    }
    comp = td.comparisons(loss, "teacher", "alone", ["d", "e"], block=50, seed=0)
    assert list(comp.index) == ["alone", "d", "e"] and np.isnan(comp.loc["alone", "gap_closed"])
    assert comp.loc["d", "gap_closed"] == pytest.approx(0.6)
    assert comp.loc["alone", "vs_teacher"] == pytest.approx(alone.mean() - teacher.mean())
    assert comp.loc["d", "vs_alone_verdict"] == "better"
    met, missed = td.targets(comp, "d")[0], td.targets(comp, "e")[0]
    assert met["met"] and met["low"] == pytest.approx(0.6) and not missed["met"]


# --- notebook 14 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,name,allowed",
    [
        ({"ALPHA": 1.5}, "ALPHA", "[0.0, 1.0]"),
        ({"ALPHA": -0.1}, "ALPHA", "[0.0, 1.0]"),
        ({"TEMPERATURES": [0.0]}, "TEMPERATURES", "> 0"),
        ({"TEMPERATURES": [2.0, -1.0]}, "TEMPERATURES", "> 0"),
        ({"TEMPERATURES": []}, "TEMPERATURES", "at least 1"),
        ({"TEMPERATURES": "2"}, "TEMPERATURES", "a list"),
        ({"STUDENT_HEADS": 3}, "STUDENT_HEADS", "a divisor of STUDENT_WIDTH = 64"),
        ({"HEADS": 3}, "HEADS", "a divisor of WIDTH = 128"),
        ({"STUDENT_WIDTH": 0}, "STUDENT_WIDTH", ">= 1"),
        ({"STUDENT_STEPS": 0}, "STUDENT_STEPS", ">= 1"),
        ({"STUDENT_WARMUP_STEPS": 500}, "STUDENT_WARMUP_STEPS", "[0, 400]"),
        ({"STUDENT_LR": 0.0}, "STUDENT_LR", "(0.0, 1.0]"),
        ({"SELECT_WINDOWS": 0}, "SELECT_WINDOWS", ">= 1"),
        ({"EVAL_WINDOWS": -1}, "EVAL_WINDOWS", ">= 0"),
        ({"TEXT_PATH": "/no/such/file.txt"}, "TEXT_PATH", ""),
        ({"BLOCK": 10**9}, "BLOCK", ""),
    ],
)
def test_notebook_14_refuses_bad_input_in_validation(override: dict, name: str, allowed, tmp_path):
    """Notebook 14 stops in its validation cell, before any training, naming the parameter and
    what is allowed."""
    from notebook_runner import ROOT, validation_error

    err = validation_error(ROOT / "notebooks" / "14_transformer_distillation.ipynb", tmp_path,
                           **override)  # fmt: skip
    assert isinstance(err, ParameterError), repr(err)
    assert name in str(err) and allowed in str(err), str(err)


@pytest.mark.parametrize(
    "wrong,right", [("TEMPERATURE", "TEMPERATURES"), ("STUDENT_WIDHT", "STUDENT_WIDTH")]
)
def test_notebook_14_names_the_closest_parameter_to_an_unknown_one(wrong, right, tmp_path):
    from notebook_runner import ROOT, validation_error

    from nbhelpers.core.params import UnknownParameterError

    err = validation_error(ROOT / "notebooks" / "14_transformer_distillation.ipynb", tmp_path,
                           **{wrong: 2})  # fmt: skip
    assert isinstance(err, UnknownParameterError) and err.closest == right, repr(err)


def test_notebook_14_writes_its_technique_out_and_checks_it():
    """The technique-core cell (the loss by hand against the library) is in section 2 and asserts;
    tests/expect/14_transformer_distillation.yaml checks what it records when it runs."""
    from notebook_runner import ROOT, technique_core_problems

    nb = ROOT / "notebooks" / "14_transformer_distillation.ipynb"
    assert technique_core_problems(nb) == []


def test_validation_bits_at_a_step_take_the_last_row_at_or_before_it():
    hist = pd.DataFrame({"step": [100, 200, 300], "val_bits": [3.0, 2.5, 2.2]})
    assert td.val_bits_at(hist, 250) == (200, 2.5) and td.val_bits_at(hist, 300) == (300, 2.2)
    step, bits = td.val_bits_at(hist, 99)
    assert step == 0 and np.isnan(bits)
