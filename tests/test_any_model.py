"""Techniques on a model that is not a shared one: a small residual CNN, layers by name."""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import neuron_pruning, normalization, quantization


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.skip(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU()
        )
        self.block1 = Block(4, 4)
        self.block2 = Block(4, 8, 2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))))


class Branchy(TinyResNet):
    def forward(self, x):  # data-dependent control flow: torch.fx cannot trace it
        return super().forward(x) if x.sum() > 0 else super().forward(-x)


def trained_like() -> TinyResNet:
    """A TinyResNet with random batch norm statistics and affine terms (as after training)."""
    torch.manual_seed(0)
    m = TinyResNet()
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


X = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_output_layer_is_the_classifier():
    assert neuron_pruning.output_layer(trained_like(), X) == "head.2"


def test_prune_channels_of_one_layer_equals_silencing_them():
    m = trained_like()
    pruned, table = neuron_pruning.prune_channels(m, X, 0.5, ["block2.conv1"], "l1")
    assert table.loc["block2.conv1", "units after"] == 4
    assert table["cut"].sum() == 1  # nothing is coupled to the inside of a block
    # the kept filters are rows of the original; silencing the others' inputs in conv2 and
    # removing them give the same logits
    old, new = m.block2.conv1.weight, pruned.block2.conv1.weight
    kept = [int((old - row).abs().flatten(1).sum(1).argmin()) for row in new]
    dropped = [j for j in range(8) if j not in kept]
    silenced = copy.deepcopy(m)
    with torch.no_grad():
        silenced.block2.conv2.weight[:, dropped] = 0
    torch.testing.assert_close(pruned(X), silenced(X), atol=1e-5, rtol=0)
    # L1: every kept filter, with its group, outweighs every removed one in block2.conv1's norm
    assert min(old[kept].abs().sum((1, 2, 3))) > 0


def test_prune_channels_cuts_what_a_residual_couples():
    m = trained_like()
    pruned, table = neuron_pruning.prune_channels(m, X, 0.5, ["block1.conv2"])
    # block1 adds its input (the stem's channels) to conv2's: the stem and conv2 lose the same 2
    assert table.loc[table["cut"]].index.tolist() == ["stem.0", "block1.conv2"]
    assert table.loc["stem.0", "units after"] == table.loc["block1.conv2", "units after"] == 2
    assert pruned(X).shape == (16, 3)
    every, t_all = neuron_pruning.prune_channels(m, X, 0.5)
    assert t_all.loc["head.2", "units after"] == 3 and not t_all.loc["head.2", "cut"]
    assert sum(p.numel() for p in every.parameters()) < sum(p.numel() for p in m.parameters()) / 2


@pytest.mark.parametrize("layers", [["block1.conv9"], ["head.2"], []])
def test_prune_channels_names_the_bad_layer(layers):
    with pytest.raises(ParameterError, match="LAYERS.*block1.conv1"):
        neuron_pruning.prune_channels(trained_like(), X, 0.5, layers)


def test_prune_channels_rejects_an_input_the_model_refuses():
    with pytest.raises(ValueError, match=r"fails on the example of shape \(16, 3, 8, 8\)"):
        neuron_pruning.prune_channels(trained_like(), torch.zeros(16, 3, 8, 8), 0.5)


class Detached(TinyResNet):
    def forward(self, x):  # the autograd graph torch-pruning traces is cut after the stem
        return self.head(self.block2(self.block1(self.stem(x).detach())))


def test_prune_channels_names_a_dependency_the_graph_cannot_see():
    with pytest.raises(ValueError, match="graph of Detached does not reach layer 'stem.0'"):
        neuron_pruning.prune_channels(Detached().eval(), X, 0.5, ["stem.0"])


def test_fold_batchnorm_through_fx_keeps_the_outputs():
    m = trained_like()
    folded = normalization.fold_batchnorm(m)
    assert normalization.count_batchnorm(folded) == 0
    torch.testing.assert_close(folded(X), m(X), atol=1e-5, rtol=1e-5)
    assert normalization.count_batchnorm(m) == 6  # stem 1, block1 2, block2 3: unchanged


def test_fold_batchnorm_errors_name_the_cause():
    with pytest.raises(ValueError, match="torch.fx cannot trace Branchy"):
        normalization.fold_batchnorm(Branchy())
    odd = trained_like()
    odd.head = nn.Sequential(
        nn.ReLU(), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )
    with pytest.raises(ValueError, match=r"\['head.1'\] do not directly follow"):
        normalization.fold_batchnorm(odd.eval())


def test_static_int8_fx_quantizes_the_residual_model_and_reloads_exactly(tmp_path):
    m = trained_like()
    batches = [(X[i : i + 4], None) for i in range(0, 16, 4)]
    q = quantization.static_int8_fx(m, X, batches, batches=4)
    kinds = {type(mod) for mod in q.modules()}
    assert not kinds & {nn.Conv2d, nn.Linear, nn.BatchNorm2d}  # every weighted layer is int8
    assert sum(isinstance(mod, torch.ao.nn.quantized.Conv2d) for mod in q.modules()) == 6
    assert "add_relu" in q.code  # the residual sum runs in int8
    buffer = io.BytesIO()
    torch.save(q.state_dict(), buffer)  # the artifact: int8 weights keyed by the layers' names
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert "block2.skip.0.weight" in state and state["block2.skip.0.weight"].dtype == torch.qint8
    back = quantization.load_static_int8(TinyResNet(), X, state)
    assert torch.equal(back(X), q(X))
    path = tmp_path / "int8.pt"
    torch.save(q.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading the file warns of nothing
        from_file = quantization.load_static_int8(TinyResNet(), X, path)
    assert torch.equal(from_file(X), q(X))
    # the int8 logits stay near the float ones: error of a few quantization steps of the output
    assert (q(X) - m(X)).abs().max() < 0.25 * m(X).abs().max()


def test_static_int8_fx_keeps_named_layers_in_float_and_checks_names():
    m = trained_like()
    batches = [(X, None)]
    q = quantization.static_int8_fx(m, X, batches, 1, keep_float=["head.2"])
    assert type(dict(q.named_modules())["head.2"]) is nn.Linear
    with pytest.raises(ParameterError, match="KEEP_FLOAT.*stem.0"):
        quantization.static_int8_fx(m, X, batches, 1, keep_float=["nope"])
    with pytest.raises(ValueError, match="torch.fx cannot trace Branchy"):
        quantization.static_int8_fx(Branchy(), X, batches, 1)


def test_sparse_int8_artifact_is_keyed_by_layer_names_and_reloads_into_a_fresh_model(tmp_path):
    from nbhelpers.techniques import compression

    folded = normalization.fold_batchnorm(trained_like())
    q = compression.int8_model(folded)
    arrays = compression.pack_int8_sparse(q)
    names = compression.layer_names(arrays)
    assert names == [n for n, m in folded.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert "block2.skip.0" in names and str(arrays["head.2.kind"]) == "linear"
    compression.save_artifact(arrays, tmp_path / "a.npz")
    fresh = normalization.fold_batchnorm(TinyResNet().eval())  # untrained: only the shapes count
    back = compression.unpack_int8(compression.load_artifact(tmp_path / "a.npz"), fresh)
    assert torch.equal(back(X), q(X))
    with pytest.raises(ValueError, match="fold them first"):
        compression.pack_int8_sparse(compression.int8_model(trained_like()))
    with pytest.raises(ValueError, match="fold them first"):
        compression.unpack_int8(arrays, TinyResNet())


def test_unstructured_pruning_and_distillation_take_the_residual_model_as_it_is():
    from nbhelpers.techniques import distillation, pruning

    m = trained_like()
    pruning.magnitude_prune(m, 0.8, "global", only=["block1.conv1", "block2.skip.0"])
    chosen = [m.block1.conv1, m.block2.skip[0]]
    masked = sum(int((c.weight == 0).sum()) for c in chosen)
    assert masked == round(0.8 * sum(c.weight.numel() for c in chosen))  # 144 + 32 weights
    assert bool((m.block2.conv1.weight != 0).all())  # a layer not named is left alone
    teacher, student = trained_like(), TinyResNet()
    loss_fn = distillation.make_loss_fn(teacher, "hinton", 4.0, 0.5)
    loss = loss_fn(student(X), torch.zeros(16, dtype=torch.long), X)
    loss.backward()
    assert loss.item() > 0 and student.stem[0].weight.grad.abs().sum() > 0
