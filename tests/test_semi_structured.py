"""N:M semi-structured sparsity (``techniques.pruning.semi_structured``): exact masks, ties, the
pattern kept through fine-tuning, bad input; the sparse kernels on a CUDA GPU (skipped without)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import pruning as P

CUDA = torch.cuda.is_available()


def test_each_group_of_four_keeps_exactly_its_two_largest():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    mask = P.mask_2_4(w)
    assert mask.shape == w.shape and mask.dtype == w.dtype
    groups, kept = w.abs().reshape(-1, 4), mask.reshape(-1, 4)
    assert torch.equal(kept.sum(1), torch.full((len(groups),), 2.0))
    assert set(kept.unique().tolist()) == {0.0, 1.0}
    # every kept |w| is at least every dropped |w| of its group
    low_kept = torch.where(kept == 1, groups, torch.inf).amin(1)
    high_dropped = torch.where(kept == 0, groups, -torch.inf).amax(1)
    assert bool((low_kept >= high_dropped).all())
    assert float((w * mask == 0).float().mean()) == 0.5


def test_a_known_matrix():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 0.0, -4.0, 1.0]])
    assert P.mask_2_4(w).tolist() == [[0, 1, 1, 0, 1, 0, 1, 0]]
    assert P.mask_2_4(w, 1, 4).tolist() == [[0, 1, 0, 0, 0, 0, 1, 0]]
    assert P.mask_2_4(w, 1, 2).tolist() == [[0, 1, 1, 0, 1, 0, 1, 0]]


def test_ties_keep_the_lower_column_whatever_the_sign():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, -1.0, 1.0]])
    assert P.mask_2_4(w).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert torch.equal(P.mask_2_4(w), P.mask_2_4(w.clone()))  # the same on every call


def test_is_n_m():
    w = torch.randn(8, 16)
    assert not P.is_n_m(w)
    assert P.is_n_m(w * P.mask_2_4(w))
    w2 = w * P.mask_2_4(w)
    w2[0, 0:4] = 1.0  # one group with four nonzeros
    assert not P.is_n_m(w2)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))


def test_prune_a_model_keeps_the_pattern_through_training():
    model = _model()
    P.semi_structured_prune(model, only=["0"])
    assert P.is_pruned(model) and P.is_n_m(model[0].weight) and not P.is_n_m(model[2].weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):  # the masked weights get no update
        opt.zero_grad()
        model(torch.randn(5, 8)).pow(2).sum().backward()
        opt.step()
    P.make_permanent(model)
    assert P.is_n_m(model[0].weight)
    assert int((model[0].weight == 0).sum()) == model[0].weight.numel() // 2
    layers = P.layer_sparsity(model)
    assert layers.loc["0", "sparsity"] == 0.5 and layers.loc["2", "sparsity"] == 0.0


def test_masks_of_every_linear():
    model = _model()
    masks = P.semi_structured_masks(model)
    assert list(masks) == ["0", "2"]
    assert all(float(m.mean()) == 0.5 for m in masks.values())


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: P.mask_2_4(torch.randn(4, 8), n=0), "n"),
        (lambda: P.mask_2_4(torch.randn(4, 8), n=4, m=4), "n"),
        (lambda: P.mask_2_4(torch.randn(4, 8), n=2, m=1), "m"),
        (lambda: P.mask_2_4(torch.randn(4, 8), n=2.0), "n"),
        (lambda: P.mask_2_4(torch.randn(4, 6)), "m"),
        (lambda: P.mask_2_4(torch.randn(8)), "weight"),
        (lambda: P.mask_2_4(torch.ones(4, 8, dtype=torch.int64)), "weight"),
        (lambda: P.mask_2_4(torch.full((4, 8), float("nan"))), "weight"),
        (lambda: P.semi_structured_prune(nn.Sequential(nn.Linear(6, 4))), "m"),
        (lambda: P.semi_structured_prune(_model(), only=["1"]), "only"),
        (lambda: P.is_n_m(torch.randn(4, 6)), "m"),
    ],
)
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ParameterError) as err:
        call()
    assert err.value.name == name


def test_sparse_kernels_report_why_not():
    why = P.sparse_kernels_available()
    if not CUDA:
        assert why == "no CUDA device"
        with pytest.raises(RuntimeError, match="no CUDA device"):
            P.to_semi_structured(_model(), ["0"])


@pytest.mark.gpu
@pytest.mark.skipif(
    P.sparse_kernels_available() is not None, reason="needs CUDA sparse tensor cores (sm_80+)"
)
def test_semi_structured_kernels_on_cuda():
    """The 2:4 weights as ``to_sparse_semi_structured`` tensors give the dense pruned outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    P.make_permanent(P.semi_structured_prune(model))
    sparse, done = P.to_semi_structured(model, ["0", "2"])
    assert done == ["0", "2"]
    assert type(sparse[0].weight).__name__.startswith("SparseSemiStructuredTensor")
    dense = model.to("cuda", torch.float16)
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        ref, out = dense(x), sparse(x)
    # float16 products summed in another order: a few units of float16 rounding of the outputs
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)
