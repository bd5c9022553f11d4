"""Unit tests of nbhelpers.techniques.normalization: from-scratch batch norm against torch's,
folding,
helpers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nbhelpers.core.models import MLP, LeNet5
from nbhelpers.core.params import ParameterError
from nbhelpers.lessons import batch_normalization as lesson
from nbhelpers.measure.stats import seed_interval
from nbhelpers.techniques import normalization as N

TOL = 1e-6  # float32 keeps ~7 digits: compare as torch.allclose(atol=1e-6, rtol=1e-6)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    """Equal within ``tol`` absolutely below 1 and relatively above."""
    return torch.allclose(a, b, atol=tol, rtol=tol)


def pair(kind: str, c: int, momentum, affine: bool, seed: int = 0):
    """torch's batch norm and ours with the same (random, non-trivial) affine parameters."""
    torch.manual_seed(seed)
    ref = (nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d)(c, momentum=momentum, affine=affine)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 2.0)
            ref.bias.normal_()
    ours = N.from_torch(ref)
    return ref, ours


def batch(kind: str, n: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, c) if kind == "1d" else (n, c, 5, 4)
    return torch.randn(*shape, generator=g) * 3.0 + 1.5


@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_and_eval_match_torch(kind, momentum, affine, seed):
    """Outputs, gradients and running statistics equal torch's over several training steps, then in
    eval."""
    ref, ours = pair(kind, 6, momentum, affine, seed)
    for step in range(5):
        x = batch(kind, 8, 6, seed=100 * seed + step)
        xr, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        yr, yo = ref(xr), ours(xo)
        assert close(yr, yo)
        w = torch.randn_like(yr)
        (yr * w).sum().backward()
        (yo * w).sum().backward()
        assert close(xr.grad, xo.grad, 1e-5)
        assert close(ref.running_mean, ours.running_mean)
        assert close(ref.running_var, ours.running_var)
        assert int(ref.num_batches_tracked) == int(ours.num_batches_tracked) == step + 1
        if affine:
            assert close(ref.weight.grad, ours.weight.grad, 1e-5)
            assert close(ref.bias.grad, ours.bias.grad, 1e-5)
    ref.eval(), ours.eval()
    x = batch(kind, 3, 6, seed=99 + seed)
    assert close(ref(x), ours(x))
    assert close(ref.running_mean, ours.running_mean)  # eval leaves them alone


def test_running_var_is_unbiased():
    """After one step with momentum 1 the running variance is the unbiased batch variance."""
    ours = N.BatchNorm(3, momentum=1.0)
    x = torch.randn(4, 3)
    ours(x)
    assert torch.allclose(ours.running_var, x.var(0, unbiased=True), atol=TOL)
    assert torch.allclose(ours.running_mean, x.mean(0), atol=TOL)


def test_training_output_is_normalized_and_state_dict_compatible():
    ours = N.BatchNorm(4, affine=False)
    y = ours(torch.randn(64, 4) * 5 + 3)
    assert torch.allclose(y.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.var(0, unbiased=False), torch.ones(4), atol=1e-3)
    assert set(N.BatchNorm(4).state_dict()) == set(nn.BatchNorm1d(4).state_dict())


def test_batch_of_one_raises():
    with pytest.raises(ValueError, match="more than 1 value"):
        N.BatchNorm(3)(torch.randn(1, 3))


@pytest.mark.parametrize(
    "model_fn", [lambda: MLP(784, batchnorm=True), lambda: LeNet5(batchnorm=True)]
)
def test_swapped_model_matches_torch(model_fn):
    """The shared models with our BN give the same logits as with torch's, in training and
    evaluation."""
    torch.manual_seed(0)
    model = model_fn()
    ours = N.swap_batchnorm(model)
    assert N.count_batchnorm(ours) == N.count_batchnorm(model) > 0
    assert not any(isinstance(m, N.BN_TYPES) for m in ours.modules())
    x = torch.rand(16, 1, 28, 28)
    model.train(), ours.train()
    assert torch.allclose(model(x), ours(x), atol=1e-5)
    model.eval(), ours.eval()
    assert torch.allclose(model(x), ours(x), atol=1e-5)


def trained_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the BN layers non-trivial running statistics and affine parameters."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (N.BatchNorm, *N.BN_TYPES)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, 1, 28, 28) * 2)
    return model.eval()


@pytest.mark.parametrize("arch", ["mlp", "lenet5"])
@pytest.mark.parametrize("scratch", [False, True])
def test_folding_keeps_outputs(arch, scratch):
    model = MLP(784, batchnorm=True) if arch == "mlp" else LeNet5(batchnorm=True)
    model = trained_stats(N.swap_batchnorm(model) if scratch else model)
    folded = N.fold_batchnorm(model)
    assert N.count_batchnorm(folded) == 0 and type(folded) is type(model)
    assert len(folded) == len(model) - N.count_batchnorm(model)
    plain = MLP(784) if arch == "mlp" else LeNet5()
    assert [type(m) for m in folded] == [type(m) for m in plain]  # exactly the no-BN architecture
    x = torch.rand(20, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5)
    assert N.count_batchnorm(model) > 0  # the original is untouched


def test_fold_bn_without_bias_and_bad_layer():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3)
    bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    bn.eval()
    fused = N.fold_bn(conv, bn)
    x = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        assert torch.allclose(bn(conv(x)), fused(x), atol=1e-5)
    with pytest.raises(TypeError):
        N.fold_bn(nn.ReLU(), bn)
    with pytest.raises(ValueError, match="does not follow"):
        N.fold_batchnorm(nn.Sequential(nn.BatchNorm1d(3)))


def test_activation_stats_records_training_only():
    torch.manual_seed(0)
    model = MLP(20, hidden=(8, 4), batchnorm=True)
    stats = N.ActivationStats(model, every=2)
    model.train()
    for _ in range(5):
        model(torch.randn(16, 20))
    model.eval()
    model(torch.randn(16, 20))
    stats.remove()
    model.train()
    model(torch.randn(16, 20))
    df = stats.frame()
    assert sorted(df["layer"].unique()) == ["relu 1", "relu 2"]
    assert sorted(df["step"].unique()) == [0, 2, 4]
    assert (df["q15"] <= df["q50"]).all() and (df["q50"] <= df["q85"]).all()


def test_scale_invariance_and_gradients():
    torch.manual_seed(0)
    model = MLP(20, hidden=(8, 4), batchnorm=True)
    x, y = torch.randn(32, 20), torch.randint(0, 10, (32,))
    df = N.scale_invariance(model, x, y, index=1, scales=[1.0, 3.0, 10.0])
    assert df["max |logits change|"].max() < 1e-4
    assert df["grad norm x scale"].std() / df["grad norm x scale"].mean() < 1e-3
    assert df["weight grad norm"].iloc[0] > 9 * df["weight grad norm"].iloc[2]
    g = N.bn_activation_and_gradient(model, x, y)
    assert list(g["layer"]) == ["bn 1", "bn 2"]
    assert (g["output std"] - 1).abs().max() < 0.05  # gamma=1, beta=0 at init: unit spread


def test_train_mode_accuracy_leaves_model_alone():
    torch.manual_seed(0)
    model = trained_stats(MLP(784, batchnorm=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X, y = torch.rand(50, 1, 28, 28), torch.randint(0, 10, (50,))
    acc = N.train_mode_accuracy(model, X, y, batch_size=8)
    assert 0.0 <= acc <= 1.0 and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert 0.0 <= N.train_mode_accuracy(model, X, y, batch_size=7, sort_by_label=True) <= 1.0


def test_epochs_to_reach_and_padding():
    assert N.epochs_to_reach([0.2, 0.5, 0.9, 0.95], 0.9) == 3.0
    assert N.epochs_to_reach([0.2, 0.5], 0.5) == 2.0
    assert math.isnan(N.epochs_to_reach([0.2, 0.5], 0.51))
    h = pd.DataFrame({"epoch": [1, 2], "val_accuracy": [0.3, 0.1]})
    assert list(N.padded(h, 4)) == [0.3, 0.1, 0.1, 0.1]


def test_speed_table():
    rows = []
    for bn, curve in [(False, [0.5, 0.7, 0.8, 0.9]), (True, [0.85, 0.92, 0.95, 0.96])]:
        for seed in (0, 1):
            for e, v in enumerate(curve, 1):
                rows.append(
                    {
                        "arch": "mlp",
                        "bn": bn,
                        "lr": 0.1,
                        "seed": seed,
                        "epoch": e,
                        "val_accuracy": v,
                    }
                )
    t = N.speed_table(pd.DataFrame(rows), "mlp", 4)
    assert t.loc[0, "bn_epochs_to_no_bn_final"] == 2.0 and t.loc[0, "fraction_of_budget"] == 0.5


@pytest.mark.parametrize(
    "bad", [[], [0.1, 0.0], [0.1, -1.0], "0.1", [0.1, 0.1], [float("nan")], [True], [20.0]]
)
def test_check_lrs_rejects(bad):
    with pytest.raises(ParameterError, match="LRS"):
        N.check_lrs("LRS", bad)


def test_check_lrs_sorts():
    assert N.check_lrs("LRS", [1, 0.01, 0.1]) == [0.01, 0.1, 1.0]


def test_activation_stats_hooks_sigmoids_by_parameter():
    torch.manual_seed(0)
    model = MLP(20, hidden=(8, 8, 4), activation="sigmoid", batchnorm=True).train()
    relu_only = N.ActivationStats(model)  # the default hooks ReLUs: none here
    stats = N.ActivationStats(model, kinds=(nn.Sigmoid,))
    model(torch.randn(16, 20))
    relu_only.remove(), stats.remove()
    assert relu_only.frame().empty
    df = stats.frame()
    assert list(df["layer"]) == ["sigmoid 1", "sigmoid 2", "sigmoid 3"]
    assert abs(float(df["mean"].iloc[0])) < 1e-5  # a sigmoid's input is the BN output: centred


def test_check_lrs_maximum():
    assert N.check_lrs("SIG_LRS", [12.5, 0.5], maximum=100.0) == [0.5, 12.5]
    with pytest.raises(ParameterError, match=r"SIG_LRS.*\(0, 100\]"):
        N.check_lrs("SIG_LRS", [150.0], maximum=100.0)


def test_seed_interval():
    low, high = seed_interval([0.8, 0.9, 1.0])
    assert low < 0.9 < high and math.isclose(high - 0.9, 0.9 - low)
    assert math.isclose(high - 0.9, 4.302652729911275 * 0.1 / math.sqrt(3), rel_tol=1e-6)
    assert all(math.isnan(v) for v in seed_interval([0.5]))


def synthetic(plain: list, bn: list, arch: str = "net", lr: float = 0.1) -> pd.DataFrame:
    """Curves of two seeds per setting: ``plain`` and ``bn`` are per-seed lists of per-epoch
    values."""
    rows = []
    for flag, per_seed in ((False, plain), (True, bn)):
        for seed, curve in enumerate(per_seed):
            rows += [
                {"arch": arch, "bn": flag, "lr": lr, "seed": seed, "epoch": e, "val_accuracy": v}
                for e, v in enumerate(curve, 1)
            ]
    return pd.DataFrame(rows)


def test_speed_with_interval():
    curves = synthetic([[0.1, 0.5, 0.7], [0.1, 0.5, 0.9]], [[0.75, 0.85, 0.95], [0.85, 0.85, 0.95]])
    s = N.speed_with_interval(curves, "net", 0.1, 3)
    assert math.isclose(s["no_bn_final"], 0.8) and s["bn_epochs"] == 1.0  # BN epoch 1: mean 0.8
    assert math.isclose(s["fraction"], 1 / 3) and s["low"] == 1 / 3
    assert s["high"] == 4 / 3  # the high end (above 1) is never reached: one epoch past the budget
    assert s["bn_first_epoch"] == 0.8 and s["no_bn_first_epoch"] == 0.1


def test_accuracy_gap_pools_seeds():
    best = [np.array([True] * 10), np.array([True] * 10)]
    other = [np.array([True] * 8 + [False] * 2), np.array([True] * 9 + [False])]
    gap, (low, high) = N.accuracy_gap(best, other)
    assert math.isclose(gap, 15.0) and low < gap < high


def grid_fixture():
    """A toy grid: no BN fails at the large rate, BN trains at both."""
    final, curves, val = [], [], {}
    for bn in (False, True):
        for lr in (0.1, 0.5):
            ok = bn or lr == 0.1
            for seed in (0, 1):
                acc = (0.9 if bn else 0.8) if ok else 0.1
                final.append(
                    {"arch": "net", "bn": bn, "lr": lr, "seed": seed, "final_val_accuracy": acc}
                )
                curves += [
                    {
                        "arch": "net",
                        "bn": bn,
                        "lr": lr,
                        "seed": seed,
                        "epoch": e,
                        "val_accuracy": acc,
                    }
                    for e in (1, 2, 3)
                ]
                hits = np.arange(100) < 100 * acc - (5 if bn and lr == 0.5 else 0)
                val.setdefault(("net", bn, lr), []).append(hits)
    return pd.DataFrame(final), pd.DataFrame(curves), val


def test_lr_facts_and_targets():
    final, curves, val = grid_fixture()
    f = N.lr_facts(final, curves, "net", 3, 0.5, val)
    assert f["best_no_bn_lr"] == 0.1 and f["no_bn_failing_lrs"] == [0.5] and f["robust_lr"] == 0.5
    assert math.isclose(f["bn_gap_points"], 5.0) and f["gap_low"] < 5.0 < f["gap_high"]
    assert f["speed"]["fraction"] == 1 / 3
    g = N.lr_facts(final, curves, "net", 3, 0.5, val, factor=5.0)
    assert g["robust_lr"] == 0.5  # 5 x 0.1, up to float rounding
    h = N.lr_facts(final, curves, "net", 3, 0.5, val, factor=3.0)
    assert math.isnan(h["robust_lr"]) and math.isnan(h["bn_gap_points"])
    speed_t, robust_t = lesson.bn_targets(f)
    assert speed_t["met"] and not robust_t["met"] and robust_t["decided"] is not None
    assert math.isnan(lesson.bn_targets(h)[1]["low"])  # no robustness rate: no interval


def test_chosen_test_uses_validation_only():
    final, _, _ = grid_fixture()
    models, loader_ = {}, [(torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))]
    for _, r in final.iterrows():
        lin = nn.Linear(3, 2)
        with torch.no_grad():  # a constant guess: class 0 without BN, class 1 with BN
            lin.weight.zero_(), lin.bias.copy_(torch.tensor([0.0, 1.0] if r.bn else [1.0, 0.0]))
        models[(r.arch, r.bn, r.lr, r.seed)] = lin
    t = N.chosen_test(final, models, loader_)
    assert list(t["lr"]) == [0.1, 0.1] and list(t["test_mean"]) == [0.5, 0.5]
    assert t["bn_minus_no_bn_points"].iloc[1] == 0.0 and t["verdict"].iloc[1] == "within noise"


def test_drift_table_and_compare_with_torch():
    act = pd.DataFrame(
        {
            "run": ["a"] * 3,
            "layer": ["x"] * 3,
            "step": [0, 1, 2],
            "q15": [-1.0, -2.0, -1.0],
            "q50": [0.0, 1.0, 0.5],
            "q85": [1.0, 2.0, 3.0],
        }
    )
    d = lesson.drift_table(act).iloc[0]
    assert d["median_range"] == 1.0 and d["spread_range"] == 2.0 and d["spread_last"] == 4.0
    for kind in ("1d", "2d"):
        diffs = lesson.compare_with_torch(kind)
        assert max(v for k, v in diffs.items() if k != "input gradient error") < 1e-5


def test_lr_range_counts_what_bn_opens():
    """BN trains at both rates, no BN only at the small one; BN at the large rate is 5 points
    below its best, so only the small rate is near the best on either side at 1 point."""
    final, _, val = grid_fixture()
    final.loc[final.bn & (final.lr == 0.5), "final_val_accuracy"] = 0.85  # as its validation hits
    r = N.lr_range(final, "net", 0.5, val)
    assert r["rates"] == [0.1, 0.5] and r["tolerance"] == N.NEAR_BEST_POINTS
    assert r["trains_bn"] == [0.1, 0.5] and r["trains_no_bn"] == [0.1] and r["bn_only"] == [0.5]
    assert r["near_bn"] == [0.1] and r["near_no_bn"] == [0.1] and r["near_extra"] == 0
    assert r["largest_near_bn"] == 0.1 and r["gap_bn"] == 0.0
    wide = N.lr_range(final, "net", 0.5, val, tolerance=5.0)  # 5 points below counts as near
    assert wide["near_bn"] == [0.1, 0.5] and wide["largest_near_bn"] == 0.5
    assert math.isclose(wide["gap_bn"], 5.0) and wide["low_bn"] < 5.0 < wide["high_bn"]
    assert wide["near_extra"] == 1


def test_summary_states_the_range_bn_opens():
    final, curves, val = grid_fixture()
    f = N.lr_facts(final, curves, "net", 3, 0.5, val)
    models, loader_ = {}, [(torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))]
    for _, r in final.iterrows():
        models[(r.arch, r.bn, r.lr, r.seed)] = nn.Linear(3, 2)
    chosen = N.chosen_test(final, models, loader_)
    drift = pd.DataFrame(columns=["run", "layer", "median_range", "spread_range"])
    small = pd.DataFrame([{"batch": b, "norm": "batch", "val_accuracy": 0.5} for b in (4, 64)])
    t = lesson.summary([f], chosen, drift, small, 1.0, 0.0, 100, 100)
    assert t.loc["net: rates where BN trains and no-BN fails", "value"] == 1
    assert t.loc["net: rates within 1 point of its best, BN minus no BN", "value"] == 1
    assert t.loc["net: largest lr within 1 point of its best, BN", "value"] == 0.5
    assert t.loc["net: largest lr within 1 point of its best, no BN", "value"] == 0.1
