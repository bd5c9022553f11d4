"""nbhelpers.measure.bpc: per-character losses in bits, bits per character, and the block
bootstrap's intervals, whose coverage on correlated synthetic losses needs blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter
from torch import nn

from nbhelpers.core import transformer as tr
from nbhelpers.core.params import ParameterError
from nbhelpers.measure import bpc


class _Fixed(nn.Module):
    """Logits that give the target class probability 1/2 and the others the rest equally."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*x.shape, self.vocab)
        # the next index, (x + 1) % vocab, gets logit log(vocab - 1): probability 1/2
        return logits.scatter(-1, ((x + 1) % self.vocab).unsqueeze(-1), math.log(self.vocab - 1))


def test_char_losses_are_bits_of_the_next_character_in_text_order():
    x = torch.arange(24).reshape(4, 6) % 9
    losses = bpc.char_losses(_Fixed(9), x, (x + 1) % 9, batch_size=3)
    assert losses.shape == (24,) and np.allclose(losses, 1.0, atol=1e-12)  # -log2(1/2)
    y = (x + 2) % 9  # the wrong character: probability 1/16 each
    assert np.allclose(bpc.char_losses(_Fixed(9), x, y), 4.0, atol=1e-6)
    assert bpc.bits_per_char(losses) == pytest.approx(1.0)


def test_char_losses_of_a_transformer_match_cross_entropy_and_restore_its_mode():
    torch.manual_seed(0)
    m = tr.CharTransformer(20, context=8, width=16, depth=1, heads=2, dropout=0.5).train()
    x = torch.randint(0, 20, (5, 8), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 20, (5, 8), generator=torch.Generator().manual_seed(2))
    losses = bpc.char_losses(m, x, y, batch_size=2)
    assert m.training
    with torch.no_grad():
        ref = -m.eval()(x).log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1) / math.log(2)
    assert np.allclose(losses.reshape(5, 8), ref.double().numpy(), atol=1e-5)


def test_bootstrap_is_seeded_and_exact_in_its_limits():
    v = np.random.default_rng(0).standard_normal(500)
    a = bpc.block_bootstrap_means(v, 25, 300, seed=4)
    assert np.array_equal(a, bpc.block_bootstrap_means(v, 25, 300, seed=4))
    assert not np.array_equal(a, bpc.block_bootstrap_means(v, 25, 300, seed=5))
    whole = bpc.block_bootstrap_means(v, 500, 100)  # one block, the whole series: no variation
    assert np.allclose(whole, v.mean(), rtol=0, atol=1e-12)
    # k = ceil(7 / 3) = 3 blocks of 3 from starts 0..4 of [0..6]: means lie in [1, 5]
    m = bpc.block_bootstrap_means(np.arange(7.0), 3, 1000)
    assert m.min() >= 1.0 and m.max() <= 5.0 and m.min() < 2.0 and m.max() > 4.0


def test_paired_difference_is_exact_for_a_constant_shift():
    a = np.random.default_rng(1).exponential(2.0, 1000)
    d = bpc.paired_bpc_difference(a, a - 0.25, block_length=50, n_boot=200)
    assert d["difference"] == pytest.approx(-0.25) and d["verdict"] == "better"
    assert d["low"] == pytest.approx(-0.25) and d["high"] == pytest.approx(-0.25)
    assert d["bpc_a"] == pytest.approx(a.mean()) and d["n"] == 1000 and d["block_length"] == 50
    assert bpc.paired_bpc_difference(a, a + 0.1, n_boot=200)["verdict"] == "worse"
    same = bpc.paired_bpc_difference(a, a, n_boot=200)
    assert (same["low"], same["high"], same["verdict"]) == (0.0, 0.0, "within noise")
    one = bpc.bpc_interval(a, block_length=50, n_boot=500)
    assert one["low"] < one["bpc"] < one["high"] and one["bpc"] == pytest.approx(a.mean())
    assert set(one) == {"bpc", "low", "high", "n", "block_length", "method", "confidence"}


def _coverage(rng: np.random.Generator, block_length: int, draws: int, n_boot: int) -> float:
    """How often the paired interval covers the true difference 0.1, over AR(1) losses."""
    n, phi, truth, hits = 10_000, 0.8, 0.1, 0
    for r in range(draws):
        e = rng.standard_normal(n)
        e[0] /= math.sqrt(1 - phi**2)  # stationary from the start
        a = 2.0 + rng.standard_normal(n)
        b = a + truth + lfilter([1.0], [1.0, -phi], e)  # correlated per-character differences
        d = bpc.paired_bpc_difference(a, b, block_length=block_length, n_boot=n_boot, seed=r)
        hits += d["low"] <= truth <= d["high"]
    return hits / draws


def test_block_intervals_cover_the_truth_and_single_character_blocks_do_not():
    """AR(1) differences with phi = 0.8 (correlation 0.8^k at lag k): the variance of their mean
    is (1 + phi) / (1 - phi) = 9 times the i.i.d. one. Blocks of 100 characters cover the true
    difference in about 95% of 200 draws (0.96 with these seeds); blocks of 1 (the i.i.d.
    bootstrap) give an interval 3 times too narrow and cover it in about half (0.45)."""
    block = _coverage(np.random.default_rng(0), 100, 200, 1000)
    iid = _coverage(np.random.default_rng(0), 1, 100, 200)
    assert block >= 0.88, block
    assert iid <= 0.65, iid


def test_bad_inputs_are_refused_naming_the_parameter():
    a = np.ones(1000)
    x = torch.zeros(2, 4, dtype=torch.long)
    cases = [
        ("losses_b", lambda: bpc.paired_bpc_difference(a, np.ones(999))),
        ("losses_a", lambda: bpc.paired_bpc_difference([], a)),
        ("losses", lambda: bpc.bpc_interval(np.array([1.0, np.nan]))),
        ("block_length", lambda: bpc.bpc_interval(a, block_length=1001)),
        ("block_length", lambda: bpc.bpc_interval(a, block_length=0)),
        ("n_boot", lambda: bpc.bpc_interval(a, n_boot=10)),
        ("confidence", lambda: bpc.bpc_interval(a, confidence=1.0)),
        ("y", lambda: bpc.char_losses(_Fixed(5), x, x[:, :3])),
        ("x", lambda: bpc.char_losses(_Fixed(5), x.flatten(), x)),
        ("batch_size", lambda: bpc.char_losses(_Fixed(5), x, x, batch_size=0)),
    ]
    for name, call in cases:
        with pytest.raises(ParameterError) as e:
            call()
        assert e.value.name == name, (name, e.value)
