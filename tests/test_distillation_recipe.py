"""Unit tests of nbhelpers.techniques.distillation.dropout_recipe (Hinton et al.'s 2012 teacher
recipe: jitter, input dropout, max-norm, damped momentum with its ramp and decay), the teacher
built and trained with it, and StudentLab's schedules and curves."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from nbhelpers.core.data import loader
from nbhelpers.core.models import MLP
from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import distillation as KD


def _images(n=6, size=5, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _shift(x: torch.Tensor, sy: int, sx: int) -> torch.Tensor:
    """One image (C, H, W) moved down by sy and right by sx pixels, zero fill."""
    out = torch.zeros_like(x)
    H, W = x.shape[-2:]
    out[:, max(sy, 0) : H + min(sy, 0), max(sx, 0) : W + min(sx, 0)] = x[
        :, max(-sy, 0) : H + min(-sy, 0), max(-sx, 0) : W + min(-sx, 0)
    ]
    return out


def test_random_shift_moves_each_training_image_within_range_and_is_identity_in_eval():
    x = _images(40)
    layer = KD.RandomShift(2)
    torch.manual_seed(0)
    out = layer(x)
    seen = set()
    for i in range(len(x)):
        matches = [
            (sy, sx)
            for sy in range(-2, 3)
            for sx in range(-2, 3)
            if torch.equal(out[i], _shift(x[i], sy, sx))
        ]
        assert matches, f"image {i} is not a shift of at most 2 pixels"
        seen.add(matches[0])
    assert len(seen) > 5  # fresh offsets per image, not one shift for the batch
    torch.manual_seed(0)
    assert torch.equal(layer(x), out)  # seeded by torch's global generator
    assert layer.eval()(x) is x
    assert KD.RandomShift(0).train()(x) is x
    with pytest.raises(ParameterError, match="x"):
        KD.RandomShift(1).train()(x.reshape(len(x), -1))


def test_max_norm_bounds_long_rows_and_leaves_short_rows_and_the_output_layer_exactly():
    model = MLP(4, [3], n_classes=2)
    with torch.no_grad():
        model[1].weight.copy_(
            torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4], [0, 0, 0, 9]])
        )
        model[3].weight.fill_(100.0)  # the output layer: not a hidden unit, never constrained
    before = model[1].weight.clone()
    out_before = model[3].weight.clone()
    assert KD.max_norm_(model, 2.0) == 2
    w = model[1].weight
    assert torch.equal(w[1], before[1])  # shorter than c: exactly as it was
    assert torch.allclose(w[0], torch.tensor([1.2, 1.6, 0.0, 0.0]))  # (3, 4) * 2 / 5
    assert torch.allclose(w[2], torch.tensor([0.0, 0.0, 0.0, 2.0]))
    norms = torch.linalg.vector_norm(w, dim=1)
    assert bool((norms <= 2.0 * (1 + 1e-6)).all())  # float32 rounding of one division
    assert torch.equal(model[3].weight, out_before)
    assert KD.max_norm_(model, 2.0) == 0  # already within the bound: nothing moves
    with pytest.raises(ParameterError, match="max_norm"):
        KD.max_norm_(model, 0.0)


def test_max_norm_hook_keeps_every_row_within_c_after_a_training_step():
    torch.manual_seed(0)
    model = MLP(8, [16, 16], n_classes=3)
    X, y = torch.randn(32, 8) * 50, torch.randint(0, 3, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    hook = KD.max_norm_hook(0.5)
    hidden = KD.dropout_recipe.hidden_linears(model)
    assert len(hidden) == 2
    nn.functional.cross_entropy(model(X), y).backward()
    opt.step()
    assert max(float(m.weight.detach().norm(dim=1).max()) for m in hidden) > 0.5  # hook has work
    hook(model)
    for layer in hidden:
        assert bool((layer.weight.norm(dim=1) <= 0.5 * (1 + 1e-6)).all())
    assert KD.max_norm_hook(0) is None


def test_damped_momentum_is_the_2012_update_rule():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = KD.DampedMomentum([w], lr=0.5, momentum=0.5)
    grads = [torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 1.0])]
    delta, expected = torch.zeros(2), torch.tensor([1.0, -2.0])
    for g in grads:
        w.grad = g.clone()
        opt.step()
        delta = 0.5 * delta - (1 - 0.5) * 0.5 * g  # dw <- p dw - (1 - p) lr g
        expected = expected + delta
        assert torch.allclose(w.detach(), expected, atol=0, rtol=1e-7)
    assert torch.equal(w.detach(), torch.tensor([1.375, -3.0]))  # by hand, exact in binary
    with pytest.raises(ParameterError, match="momentum"):
        KD.DampedMomentum([w], lr=0.5, momentum=1.0)


def test_momentum_ramp_and_rate_decay_values():
    assert KD.momentum_at(0, 500) == 0.5
    assert KD.momentum_at(250, 500) == pytest.approx(0.745)  # halfway from 0.5 to 0.99
    assert KD.momentum_at(100, 500) == pytest.approx(0.598)
    assert KD.momentum_at(500, 500) == 0.99 and KD.momentum_at(2999, 500) == 0.99
    assert KD.momentum_at(0, 0) == 0.99
    assert KD.rate_at(0, 10.0, 0.998) == 10.0
    assert KD.rate_at(3, 10.0, 0.5) == 1.25
    w = nn.Parameter(torch.zeros(1))
    opt = KD.DampedMomentum([w], lr=8.0)
    ramp = KD.MomentumRamp(opt, ramp_epochs=4, decay=0.5)
    seen = [(opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])]
    for _ in range(5):
        ramp.step()
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
    assert [lr for lr, _ in seen] == [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]
    assert [p for _, p in seen] == pytest.approx([0.5, 0.6225, 0.745, 0.8675, 0.99, 0.99])


def test_input_dropout_acts_only_in_training_mode():
    recipe = KD.TeacherRecipe(input_dropout=0.5, jitter=0)
    teacher = KD.build_teacher("mlp", (1, 5, 5), [4], dropout=0.0, recipe=recipe)
    assert isinstance(teacher[0], nn.Dropout) and teacher[0].p == 0.5
    x = _images(8)
    torch.manual_seed(0)
    dropped = teacher[0].train()(x)
    assert 0 < int((dropped == 0).sum()) < x.numel()  # some pixels dropped, kept ones scaled
    kept = dropped != 0
    assert torch.allclose(dropped[kept], 2 * x[kept])
    teacher.eval()
    assert torch.equal(teacher[0](x), x)
    plain = KD.build_teacher("mlp", (1, 5, 5), [4], dropout=0.0, recipe=KD.TeacherRecipe())
    assert isinstance(plain, MLP)  # no input layers: the model and its parameter names as before


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("optimizer", "rmsprop", "'adam', 'sgd_momentum'"),
        ("input_dropout", 1.0, r"\[0.0, 1.0\)"),
        ("jitter", 5, r"\[0, 4\]"),
        ("max_norm", -1.0, ">= 0"),
        ("momentum_ramp", -1, ">= 0"),
        ("lr_decay", 0.0, r"\(0.0, 1.0\]"),
    ],
)
def test_recipe_check_names_the_key_and_the_allowed_values(field, value, allowed):
    with pytest.raises(ParameterError, match=re.escape(f"TEACHER_RECIPE['{field}']")) as err:
        KD.TeacherRecipe(**{field: value}).check()
    assert re.search(allowed, str(err.value)), str(err.value)


def test_recipe_key_is_empty_for_the_default_teacher():
    assert KD.TeacherRecipe().key() == {}
    assert KD.TeacherRecipe(jitter=2, max_norm=15.0).key() == {"jitter": 2, "max_norm": 15.0}


def test_get_teacher_with_the_2012_recipe_is_cached_constrained_and_curved(tmp_path, monkeypatch):
    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path))
    X = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 4
    recipe = KD.TeacherRecipe("sgd_momentum", 0.2, 1, 0.3, 2, 0.5)
    val = loader(X.numpy(), y.numpy(), 40)
    args = ("toy", {"train": 40}, X, y, "mlp", [8, 8], [2, 3], 0.5, 3, 0, {"views": 1})
    first, hist, hit = KD.get_teacher(*args, lr=2.0, batch_size=10, recipe=recipe, val_loader=val)
    again, _, hit2 = KD.get_teacher(*args, lr=2.0, batch_size=10, recipe=recipe, val_loader=val)
    assert (hit, hit2) == (False, True)
    assert list(hist["lr"]) == [2.0, 1.0, 0.5]  # the per-epoch decay
    assert hist["val_accuracy"].notna().all() and len(hist) == 3
    for layer in KD.dropout_recipe.hidden_linears(first):
        assert bool((layer.weight.norm(dim=1) <= 0.3 * (1 + 1e-6)).all())
    assert isinstance(first[0], KD.RandomShift) and isinstance(first[1], nn.Dropout)
    for p, q in zip(first.parameters(), again.parameters()):
        assert torch.equal(p, q)
    plain, _, hit3 = KD.get_teacher(*args, lr=2.0, batch_size=10)
    assert not hit3 and isinstance(plain, MLP)  # another recipe: another cache entry
    blind, hist_blind, _ = KD.get_teacher(*args, lr=2.0, batch_size=10, recipe=recipe)
    assert hist_blind["val_accuracy"].isna().all()
    for p, q in zip(first.parameters(), blind.parameters()):  # scoring moved no dropout draw
        assert torch.equal(p, q)


def test_quiet_loader_gives_the_same_batches_and_leaves_the_global_generator():
    X, y = _images(10).numpy(), (torch.arange(10) % 3).numpy()
    dl = loader(X, y, 4)
    quiet = KD.teacher.quiet_loader(dl)
    for (a, b), (c, d) in zip(dl, quiet, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(quiet)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(0)
    list(dl)
    assert not torch.equal(torch.rand(3), expected)  # the plain loader does draw from it


def test_student_lab_cosine_schedule_and_curves():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(40, 1, 4, 4, generator=g)
    y = (X.reshape(40, -1)[:, 0] > 0.5).long()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher = MLP(16, [8], n_classes=2)
    test = loader(X.numpy(), y.numpy(), 1000)
    sets = {"images": (X, y)}
    lab = KD.StudentLab((1, 4, 4), sets, teacher, 3, test, test, 8, schedule="cosine", curves=True)
    lab.train("plain", [3], "images", seed=0)
    curve = lab.curves()
    assert list(curve.columns) == ["student", "seed", "epoch", "val_error"]
    assert list(curve["epoch"]) == [1, 2, 3] and curve["val_error"].between(0, 1).all()
    hist = lab._histories[lab._names[("plain", 0)]]
    assert hist["lr"].iloc[0] == pytest.approx(1e-3) and hist["lr"].iloc[-1] < 1e-3 / 2
    const = KD.StudentLab((1, 4, 4), sets, teacher, 3, test, test, 8, snapshots=[1])
    const.train("plain", [3], "images", seed=0)
    assert const.curves().empty and len(const._snapped) == 1
    cos = KD.StudentLab(
        (1, 4, 4), sets, teacher, 3, test, test, 8, snapshots=[1], schedule="cosine"
    )
    cos.train("plain", [3], "images", seed=0)
    assert not cos._snapped  # a cosine run's first epoch is not a shorter run
    with pytest.raises(ParameterError, match="STUDENT_SCHEDULE"):
        KD.StudentLab((1, 4, 4), sets, teacher, 3, test, test, 8, schedule="step")


def test_teacher_recipe_parses_the_notebook_dict_and_names_bad_keys():
    from nbhelpers.lessons import distillation as lesson

    recipe, rest = lesson.teacher_recipe({})
    assert recipe == KD.TeacherRecipe() and rest == {"dropout": 0.0, "lr": 1e-3, "batch_size": 64}
    recipe, rest = lesson.teacher_recipe({"dropout": 0.5, "jitter": 2, "batch_size": 100})
    assert (recipe.jitter, rest["dropout"], rest["batch_size"]) == (2, 0.5, 100)
    for bad, name in [
        ({"dropout": 1.0}, "TEACHER_RECIPE['dropout']"),
        ({"lr": 0}, "TEACHER_RECIPE['lr']"),
        ({"batch_size": 0}, "TEACHER_RECIPE['batch_size']"),
        ({"jitter": 9}, "TEACHER_RECIPE['jitter']"),
        ({"momentum": 0.9}, "keys among"),
        ([1, 2], "a dict"),
    ]:
        with pytest.raises(ParameterError, match=re.escape(name)):
            lesson.teacher_recipe(bad)


def test_learning_curves_epochs_table_and_run_facts():
    import pandas as pd

    from nbhelpers.lessons import distillation as lesson

    hist = pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.9, 0.95, 0.94]})
    students = pd.DataFrame(
        {
            "student": ["plain"] * 4 + ["distilled"] * 2,
            "seed": [0, 0, 1, 1, 0, 0],
            "epoch": [1, 2, 1, 2, 1, 2],
            "val_error": [0.2, 0.1, 0.4, 0.3, 0.15, 0.05],
        }
    )
    curves = lesson.learning_curves(hist, 2, students)
    teacher = curves[curves["model"] == "teacher"]
    assert list(teacher["epoch"]) == [2, 4, 6]  # a pass over 2 views is 2 passes' worth
    assert list(teacher["val_error"]) == pytest.approx([10.0, 5.0, 6.0])
    table = lesson.epochs_table(3, 2, 2, curves)
    assert list(table.index) == ["teacher", "plain", "distilled"]
    assert table.loc["teacher", "epochs"] == 6 and table.loc["teacher", "at epoch"] == 4
    assert table.loc["plain", "lowest val error (%)"] == pytest.approx(20.0)  # mean of seeds
    assert table.loc["distilled", "last val error (%)"] == pytest.approx(5.0)
    summary = pd.DataFrame({"mean": [0.9854, 0.9926]}, index=["plain", "distilled"])
    facts = lesson.run_facts(0.9933, summary, 10_000, table)
    assert facts.loc["teacher: test errors", "value"] == 67
    assert facts.loc["plain: test errors", "value"] == 146
    assert facts.loc["distilled: test errors", "value"] == 74
    assert facts.loc["teacher: test errors", "context"].startswith("[53, 85] of 10,000")
    assert facts.loc["teacher: epoch of its lowest validation error", "value"] == 4
