"""The strided-view max pooling gives PyTorch's results and steps aside wherever it might not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core import pooling
from nbhelpers.core.models import build_model


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _inputs(shape: tuple, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype)
    nan = x.clone()
    nan[x > 1.5] = float("nan")
    inf = x.clone()
    inf[x > 1.0], inf[x < -1.5] = float("-inf"), float("inf")
    return {
        "relu": x.relu(),  # many tied zeros
        "randn": x,
        "ties": torch.randint(0, 3, shape, generator=g).to(dtype),
        "nan": nan,
        "inf": inf,
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(8, 6, 28, 28), (3, 2, 7, 9), (2, 3, 2, 2)])
def test_fast_pool_equals_pytorch(shape, dtype):
    pool = nn.MaxPool2d(2)
    for kind, x in _inputs(shape, dtype).items():
        want = F.max_pool2d(x, 2)
        with pooling.fast_max_pool():
            got = pool(x)
        assert got.shape == want.shape, kind
        assert torch.equal(got.isnan(), want.isnan()), kind
        ok = ~want.isnan()
        assert torch.equal(_bits(got[ok]), _bits(want[ok])), kind  # the same bits, zeros too


def test_fast_pool_signed_zero_compares_equal():
    x = torch.tensor([[[[-0.0, 0.0], [0.0, -0.0]]]])
    with pooling.fast_max_pool():
        got = nn.MaxPool2d(2)(x)
    assert torch.equal(got, F.max_pool2d(x, 2))  # -0.0 == 0.0: the documented exception


def test_fast_pool_is_taken_only_where_exact():
    x = torch.rand(2, 3, 8, 8)
    assert pooling._eligible(nn.MaxPool2d(2), x)
    assert pooling._eligible(nn.MaxPool2d((2, 2), stride=2), x)
    assert not pooling._eligible(nn.MaxPool2d(3), x)
    assert not pooling._eligible(nn.MaxPool2d(2, stride=1), x)
    assert not pooling._eligible(nn.MaxPool2d(2, padding=1), x)
    assert not pooling._eligible(nn.MaxPool2d(2, ceil_mode=True), x)
    assert not pooling._eligible(nn.MaxPool2d(2, dilation=2), x)
    assert not pooling._eligible(nn.MaxPool2d(2, return_indices=True), x)
    assert not pooling._eligible(nn.MaxPool2d(2), x.contiguous(memory_format=torch.channels_last))
    assert not pooling._eligible(nn.MaxPool2d(2), x.half())
    assert not pooling._eligible(nn.MaxPool2d(2), x[0])  # 3-D input
    assert not pooling._eligible(nn.MaxPool2d(2), x.clone().requires_grad_())  # training
    with torch.no_grad():
        assert pooling._eligible(nn.MaxPool2d(2), x.clone().requires_grad_())


def test_fast_pool_restores_forward_keeps_hooks_and_gradients():
    model = build_model("lenet5").eval()
    x = torch.rand(4, 1, 28, 28)
    seen = []
    model[2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with pooling.fast_max_pool(), pooling.fast_max_pool():  # nested
        assert nn.MaxPool2d.forward is pooling._fast_forward
        with torch.no_grad():
            fast = model(x)
        xg = x.clone().requires_grad_()
        model(xg).sum().backward()  # gradients: PyTorch's own path
    assert nn.MaxPool2d.forward is pooling._ORIGINAL_FORWARD
    xg2 = x.clone().requires_grad_()
    model(xg2).sum().backward()
    assert torch.equal(xg.grad, xg2.grad)
    with torch.no_grad():
        assert torch.equal(fast, model(x))
    assert seen == [torch.Size([4, 6, 14, 14])] * 4
    with pytest.raises(RuntimeError), pooling.fast_max_pool():
        raise RuntimeError("boom")
    assert nn.MaxPool2d.forward is pooling._ORIGINAL_FORWARD  # restored after an error too


def test_fast_pool_leaves_tracing_alone():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)).eval()
    with pooling.fast_max_pool():
        graph = torch.fx.symbolic_trace(model)  # a Proxy, not a tensor: PyTorch's forward
        # check_trace=False: its second trace sees a patched class and names the type apart
        traced = torch.jit.trace(model, torch.rand(1, 1, 8, 8), check_trace=False)
    assert [n.target for n in graph.graph.nodes if n.op == "call_module"] == ["0", "1", "2"]
    assert "max_pool2d" in str(traced.inlined_graph)  # the traced graph keeps the pooling op
