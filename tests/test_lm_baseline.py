"""nbhelpers.core.lm_baseline: the warm-up + cosine rate, training that learns and repeats with a
seed, the cache keyed by every setting, fine-tuning that keeps pruning masks; and
nbhelpers.measure.generation."""

from __future__ import annotations

import math

import pytest
import torch
from lm_fixtures import tiny_corpus

from nbhelpers.core import lm_baseline as lb
from nbhelpers.core import text
from nbhelpers.core.params import ParameterError
from nbhelpers.measure.generation import generation_speed
from nbhelpers.techniques import pruning

SMALL = {"context": 16, "width": 16, "depth": 1, "heads": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> text.Corpus:
    """A tiny text of your own (TEXT_PATH), its vocabulary and splits."""
    return tiny_corpus(tmp_path_factory)


def test_the_rate_warms_up_linearly_then_follows_half_a_cosine_to_its_floor():
    f = [lb.lr_factor(s, 110, 10, 0.1) for s in range(110)]
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert f[10 + 50] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # never rises after the warm-up
    assert lb.lr_factor(0, 1, 0) == 1.0 and lb.lr_factor(4, 5, 5) == 1.0


def test_training_learns_repeats_with_its_seed_and_records_a_history(corpus):
    def run(seed: int) -> tuple[torch.nn.Module, object]:
        torch.manual_seed(0)
        m = lb.CharTransformer(corpus.vocab.size, **SMALL)
        return m, lb.train_lm(m, corpus, 120, 8, 1e-2, 10, seed=seed)

    m, h = run(0)
    assert list(h.step) == [100, 120] and not m.training
    assert list(h.columns) == ["step", "lr", "train_bits", "val_bits", "seconds"]
    assert h.val_bits.iloc[-1] < 0.5 * math.log2(corpus.vocab.size)  # far below uniform
    m2, h2 = run(0)
    assert h.train_bits.tolist() == h2.train_bits.tolist()
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    _, h3 = run(1)
    assert h3.train_bits.tolist() != h.train_bits.tolist()


def test_the_baseline_is_cached_under_every_setting(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path / "cache"))
    a = lb.get_lm_baseline(corpus, 0, SMALL, steps=20, batch_size=4, warmup_steps=5)
    b = lb.get_lm_baseline(corpus, 0, SMALL, steps=20, batch_size=4, warmup_steps=5)
    assert not a.from_cache and b.from_cache and a.history.equals(b.history)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(),
                                                 b.model.state_dict().values()))  # fmt: skip
    c = lb.get_lm_baseline(corpus, 0, SMALL, steps=20, batch_size=4, warmup_steps=6)
    assert not c.from_cache and len(list((tmp_path / "cache").glob("*.pt"))) == 2
    assert a.config["corpus"]["vocab"] == "".join(corpus.vocab.chars) and a.train_seconds > 0


def test_bad_settings_are_refused_before_training(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path / "cache"))
    for name, kw in [
        ("heads", {"model_args": {**SMALL, "heads": 3}}),
        ("steps", {"steps": 0}),
        ("warmup_steps", {"steps": 10, "warmup_steps": 11}),
        ("lr", {"lr": 0.0}),
        ("batch_size", {"batch_size": 0}),
    ]:
        with pytest.raises(ParameterError) as e:
            lb.get_lm_baseline(corpus, **{"model_args": SMALL, **kw})
        assert e.value.name == name, (name, e.value)
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_finetuning_keeps_the_pruning_masks(corpus):
    torch.manual_seed(0)
    m = lb.CharTransformer(corpus.vocab.size, **SMALL)
    names = [n for n, _ in pruning.prunable(m) if n != "head"]
    pruning.magnitude_prune(m, 0.5, "global", only=names)
    masks = {n: m.get_submodule(n).weight_mask.clone() for n in names}
    before = {n: m.get_submodule(n).weight_orig.detach().clone() for n in names}
    lb.lm_finetune(m, corpus, 10, 4, 1e-2)
    pruning.make_permanent(m)
    for n in names:
        w = m.get_submodule(n).weight.detach()
        assert torch.all(w[masks[n] == 0] == 0) and not torch.equal(w, before[n] * masks[n])
    assert m.head.weight is m.tok_emb.weight


def test_generation_speed_times_each_model(corpus):
    torch.manual_seed(0)
    m = lb.CharTransformer(corpus.vocab.size, **SMALL)
    table = generation_speed({"a": m, "b": m}, corpus.vocab.encode("the "), n=20, repeats=2)
    assert list(table.model) == ["a", "b"] and (table.chars == 20).all()
    assert (table.chars_per_s > 0).all()
    assert table.chars_per_s.iloc[0] == pytest.approx(20 / table.median_seconds.iloc[0])
    with pytest.raises(ParameterError):
        generation_speed({}, corpus.vocab.encode("a"))
