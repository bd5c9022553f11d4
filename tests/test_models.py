"""nbhelpers.core.models: the shared family works for 8x8 and 28x28 inputs, BatchNorm on and off."""

import pytest
import torch
from torch import nn

from nbhelpers.core.models import MLP, LeNet5, build_model
from nbhelpers.core.params import ParameterError
from nbhelpers.measure import count_parameters


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
@pytest.mark.parametrize("arch", ["mlp", "lenet5", "lenet5_caffe"])
@pytest.mark.parametrize("bn", [False, True])
def test_output_shapes(shape, arch, bn):
    m = build_model(arch, shape, batchnorm=bn).eval()
    assert m(torch.zeros(5, *shape)).shape == (5, 10)
    assert m(torch.zeros(5, shape[1] * shape[2])).shape == (5, 10)  # flat input too
    assert any(isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) for layer in m) == bn


def test_parameter_counts():
    assert (
        count_parameters(MLP())["params"]
        == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
        == 266610
    )
    expected = (
        (1 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    )
    assert count_parameters(LeNet5())["params"] == expected == 61706


@pytest.mark.parametrize("arch", ["mlp", "lenet5", "lenet5_caffe"])
def test_every_layer_is_its_own_module(arch):
    """No module object appears twice (a shared ReLU would fire every hook on it at two places)."""
    m = build_model(arch)
    assert len({id(layer) for layer in m}) == len(m)


def test_caffe_lenet5_of_han_et_al():
    """Caffe's MNIST LeNet-5: conv 20 (no padding), pool, conv 50, pool, ip 500, ReLU, ip 10."""
    m = build_model("lenet5_caffe")
    kinds = [type(layer).__name__ for layer in m]
    assert kinds == [
        "Conv2d",
        "MaxPool2d",
        "Conv2d",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]  # no ReLU after a convolution, as lenet_train_test.prototxt
    assert m[0].padding == (0, 0) and m[0].out_channels == 20 and m[2].out_channels == 50
    assert m[5].in_features == 50 * 4 * 4 and m[5].out_features == 500
    expected = (1 * 20 * 25 + 20) + (20 * 50 * 25 + 50) + (800 * 500 + 500) + (500 * 10 + 10)
    assert count_parameters(m)["params"] == expected == 431080
    assert build_model("lenet5_caffe", batchnorm=True)[1].num_features == 20


def test_mlp_options():
    m = MLP(64, hidden=[32], dropout=0.5)
    assert [type(layer).__name__ for layer in m] == [
        "Flatten",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    with pytest.raises(ParameterError, match="hidden"):
        MLP(64, hidden=[])
    with pytest.raises(ParameterError, match="MODEL='resnet'"):
        build_model("resnet")


def test_defaults_unchanged():
    assert [type(layer).__name__ for layer in MLP()] == [
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert [type(layer).__name__ for layer in MLP(batchnorm=True)][2:4] == ["BatchNorm1d", "ReLU"]


def test_sigmoid_mlp_of_ioffe_and_szegedy():
    m = build_model(
        "mlp", (1, 28, 28), activation="sigmoid", hidden=(100, 100, 100), batchnorm=True
    )
    names = [type(layer).__name__ for layer in m]
    assert names.count("Sigmoid") == 3 and names.count("BatchNorm1d") == 3 and "ReLU" not in names
    assert count_parameters(m)["params"] == 784 * 100 + 100 + 2 * (100 * 100 + 100) + 1010 + 3 * 200
    with pytest.raises(ParameterError, match="activation"):
        MLP(activation="tanh")


@pytest.mark.parametrize(
    "norm,kind", [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm), ("group", nn.GroupNorm)]
)
def test_norm_choice(norm, kind):
    torch.manual_seed(0)
    m = MLP(64, hidden=(30, 20), norm=norm).train()
    assert sum(isinstance(layer, kind) for layer in m) == 2
    out = m(torch.randn(2, 64))  # batch of two: every norm trains on it
    assert out.shape == (2, 10)
    if norm != "batch":  # no batch statistics: an example's output does not depend on its batch
        x = torch.randn(3, 64)
        # the same sums, but a batch of 3 and of 1 may take different GEMM kernels that add in
        # another order: float32 rounding (2^-24 relative per step) over sums of up to 64 terms,
        # through three layers and two norms, stays far below 1e-5 of outputs of order 1
        torch.testing.assert_close(m(x)[:1], m(x[:1]), rtol=1e-5, atol=1e-5)


def test_norm_errors():
    with pytest.raises(ParameterError, match="groups"):
        MLP(64, hidden=(30, 7), norm="group")
    with pytest.raises(ParameterError, match="norm"):
        MLP(64, norm="instance")
    with pytest.raises(ParameterError, match="norm"):
        MLP(64, batchnorm=True, norm="layer")


def test_reinitialized_keeps_shapes_and_draws_new_weights():
    from nbhelpers.core.models import reinitialized

    m = MLP(16, (6, 4))
    a, b = reinitialized(m, 1), reinitialized(m, 1)
    assert [p.shape for p in a.parameters()] == [p.shape for p in m.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # seeded
    assert not torch.equal(a[1].weight, m[1].weight)  # fresh, and the original is untouched
    assert not torch.equal(reinitialized(m, 2)[1].weight, a[1].weight)
