"""nbhelpers.models: the shared family works for 8x8 and 28x28 inputs, BatchNorm on and off."""

import pytest
import torch
from torch import nn

from nbhelpers.measure import count_parameters
from nbhelpers.models import LeNet5, MLP, build_model
from nbhelpers.params import ParameterError


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
@pytest.mark.parametrize("arch", ["mlp", "lenet5"])
@pytest.mark.parametrize("bn", [False, True])
def test_output_shapes(shape, arch, bn):
    m = build_model(arch, shape, batchnorm=bn).eval()
    assert m(torch.zeros(5, *shape)).shape == (5, 10)
    assert m(torch.zeros(5, shape[1] * shape[2])).shape == (5, 10)  # flat input too
    assert any(isinstance(l, (nn.BatchNorm1d, nn.BatchNorm2d)) for l in m) == bn


def test_parameter_counts():
    assert count_parameters(MLP())["params"] == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266610
    expected = (1 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert count_parameters(LeNet5())["params"] == expected == 61706


def test_mlp_options():
    m = MLP(64, hidden=[32], dropout=0.5)
    assert [type(l).__name__ for l in m] == ["Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    with pytest.raises(ParameterError, match="hidden"):
        MLP(64, hidden=[])
    with pytest.raises(ParameterError, match="MODEL='resnet'"):
        build_model("resnet")
