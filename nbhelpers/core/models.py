"""The shared model family: an MLP like LeNet-300-100 and a LeNet-5 CNN, BatchNorm optional.

``"lenet5_caffe"`` is the LeNet-5 of Caffe's MNIST example that Han et al. (2015, 2016) prune and
compress: conv 20, pool, conv 50, pool, fc 500, fc 10, no padding and no nonlinearity after the
convolutions (431,080 parameters for 28x28 inputs).

The MLP also takes a sigmoid in place of the ReLU (Ioffe and Szegedy's MNIST setting) and a layer or
group normalization in place of the batch norm; the defaults build the same model as before.

Both are ``nn.Sequential`` so that every layer is visible and easy to cut, fold or quantize, and
both take images of shape (N, 1, H, W) or already flat vectors, for 8x8 and 28x28 inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from nbhelpers.core.params import ParameterError, check_choice

ARCHS = ("mlp", "lenet5", "lenet5_caffe")
#: Names of the architectures for titles and tables.
LABELS = {"mlp": "MLP", "lenet5": "LeNet-5", "lenet5_caffe": "LeNet-5 (Caffe)"}
#: Caffe's LeNet-5 (Han et al.): its widths; ``LeNet5(..., caffe=True)`` drops the padding and
#: the ReLUs after the convolutions, as Caffe's ``lenet_train_test.prototxt``.
CAFFE_LENET5 = {"channels": (20, 50), "fc": (500,)}
#: Hidden-layer nonlinearities of the MLP, by name.
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}
#: Normalizations of the MLP's hidden layers: per batch, per example (layer) or per group of units.
NORMS = ("batch", "layer", "group")


def norm_layer(norm: str, width: int, groups: int = 10) -> nn.Module:
    """A normalization layer for ``width`` hidden units.

    Args:
        norm: "batch" (statistics over the batch, ``nn.BatchNorm1d``), "layer" (over the units of
            one example, ``nn.LayerNorm``) or "group" (over groups of units of one example,
            ``nn.GroupNorm``).
        width: the number of units.
        groups: groups of a group norm; must divide ``width``.

    Returns:
        The layer, with a learned per-unit scale and shift.
    """
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return nn.BatchNorm1d(width)
    if norm == "layer":
        return nn.LayerNorm(width)
    if groups < 1 or width % groups:
        raise ParameterError("groups", groups, f"a positive divisor of the layer width {width}")
    return nn.GroupNorm(groups, width)


class MLP(nn.Sequential):
    """Fully connected classifier: Flatten, then (Linear, [norm], activation, [Dropout]) per hidden
    layer.

    Args:
        in_features: inputs per example (784 for 28x28 images).
        hidden: widths of the hidden layers.
        n_classes: outputs.
        batchnorm: a ``BatchNorm1d`` after each hidden linear layer (the same as ``norm="batch"``).
        dropout: dropout probability after each activation (0: none).
        activation: "relu" (default) or "sigmoid" (Ioffe and Szegedy's MNIST network).
        norm: None (as ``batchnorm`` says), "batch", "layer" or "group" (see ``norm_layer``).
        groups: groups of a group norm; must divide every hidden width.
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (300, 100),
        n_classes: int = 10,
        batchnorm: bool = False,
        dropout: float = 0.0,
        activation: str = "relu",
        norm: str | None = None,
        groups: int = 10,
    ):
        check_choice("activation", activation, ACTIVATIONS)
        if norm is not None:
            check_choice("norm", norm, NORMS)
            if batchnorm and norm != "batch":
                raise ParameterError("norm", norm, "'batch' or None when batchnorm=True")
        norm = norm or ("batch" if batchnorm else None)
        if len(hidden) == 0 or any(int(h) < 1 for h in hidden):
            raise ParameterError("hidden", hidden, "a non-empty list of positive layer widths")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, int(h)))
            if norm is not None:
                layers.append(norm_layer(norm, int(h), groups))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, n_classes))
        super().__init__(*layers)


class LeNet5(nn.Sequential):
    """LeNet-5 with ReLU and max-pooling: conv 6, pool, conv 16, pool, fc 120, fc 84, fc classes.

    For 28x28 inputs the first convolution pads by 2 (zeros), which gives the same 28x28 maps as
    LeCun et al.'s 32x32 input (the digit centred in a 32x32 field); the second does not pad
    (14x14 to 10x10, pooled to 5x5). For small inputs such as 8x8 both convolutions pad by 2 so
    that the feature maps do not vanish.

    A modern variant, not the network of LeCun et al. (1998): ReLU instead of their scaled tanh
    (1.7159 tanh(2x/3)); 2x2 max-pooling instead of their subsampling (the sum of each 2x2 block
    times a trainable coefficient plus a trainable bias, then the squashing function); every
    conv-2 channel sees all 6 conv-1 maps instead of their partial C3 connection table (60 of 96
    pairs); fc 120 on the flattened 5x5 maps (the same arithmetic as their C5, a 5x5
    convolution); and a linear output of ``n_classes`` logits trained with cross-entropy instead
    of their 10 Euclidean RBF units with fixed weights. 61,706 parameters for 28x28 inputs and
    10 classes (about 60,000 in the original).

    Args:
        in_shape: (channels, height, width) of one input.
        n_classes: outputs.
        batchnorm: a batch norm after each convolution and hidden linear layer.
        channels: output channels of the two convolutions.
        fc: widths of the hidden linear layers.
        caffe: Caffe's variant: no padding on 28x28 inputs and no ReLU after a convolution (the
            pooling follows it directly), as the model Han et al. prune.
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 28, 28),
        n_classes: int = 10,
        batchnorm: bool = False,
        channels: Sequence[int] = (6, 16),
        fc: Sequence[int] = (120, 84),
        caffe: bool = False,
    ):
        c, h, w = in_shape
        pad2 = 0 if min(h, w) >= 16 else 2
        pad1 = pad2 if caffe else 2

        def conv_act() -> list[nn.Module]:  # a new ReLU each time (hooks tell layers apart)
            return [] if caffe else [nn.ReLU()]

        c1, c2 = int(channels[0]), int(channels[1])
        layers: list[nn.Module] = [nn.Conv2d(c, c1, 5, padding=pad1)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(c1))
        layers += [*conv_act(), nn.MaxPool2d(2), nn.Conv2d(c1, c2, 5, padding=pad2)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(c2))
        layers += [*conv_act(), nn.MaxPool2d(2), nn.Flatten()]
        with torch.no_grad():
            n_flat = nn.Sequential(*layers).eval()(torch.zeros(1, c, h, w)).shape[1]
        width = n_flat
        for f in fc:
            layers.append(nn.Linear(width, int(f)))
            if batchnorm:
                layers.append(nn.BatchNorm1d(int(f)))
            layers.append(nn.ReLU())
            width = int(f)
        layers.append(nn.Linear(width, n_classes))
        super().__init__(*layers)
        self.in_shape = tuple(in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # accepts flat vectors too
        """Classify a batch of images (or flat vectors, reshaped to the input shape)."""
        if x.dim() == 2:
            x = x.reshape(len(x), *self.in_shape)
        return super().forward(x)


def build_model(
    arch: str,
    image_shape: Sequence[int] = (1, 28, 28),
    n_classes: int = 10,
    batchnorm: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a member of the shared family for an input shape.

    Args:
        arch: "mlp", "lenet5" or "lenet5_caffe" (Caffe's 20-50-500 LeNet-5 of Han et al.).
        image_shape: (channels, height, width) of one input.
        n_classes: number of classes.
        batchnorm: insert BatchNorm after each hidden layer.
        **kwargs: passed on (``hidden``, ``dropout``, ``activation``, ``norm``, ``groups`` for the
            MLP; ``channels``, ``fc`` for LeNet-5).

    Returns:
        The freshly initialised model.
    """
    check_choice("MODEL", arch, ARCHS)
    if arch == "mlp":
        n = int(torch.tensor(image_shape).prod())
        return MLP(n, n_classes=n_classes, batchnorm=batchnorm, **kwargs)
    if arch == "lenet5_caffe":
        kwargs = {**CAFFE_LENET5, **kwargs, "caffe": True}
    return LeNet5(image_shape, n_classes=n_classes, batchnorm=batchnorm, **kwargs)


def reinitialized(model: nn.Module, seed: int) -> nn.Module:
    """A copy of a model with the same architecture and fresh initial weights.

    Every submodule with a ``reset_parameters`` (Linear, Conv2d, norms) draws new weights under
    ``seed``: the control of Liu et al. (2019), a pruned architecture trained from scratch.

    Args:
        model: the model whose shapes are kept (it is not changed).
        seed: seed of the new weights.

    Returns:
        The re-initialized copy, in training mode, on the model's device.
    """
    new = copy.deepcopy(model)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in new.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    finally:
        torch.random.set_rng_state(gen_state)
    return new.train()
