"""Unit tests of nbhelpers.techniques.distillation: the losses against hand computations, the
teacher cache,
helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nbhelpers.core.data import loader
from nbhelpers.core.models import MLP
from nbhelpers.core.params import ParameterError
from nbhelpers.lessons import distillation as lesson
from nbhelpers.techniques import distillation as KD

# Fixed tensors: two samples, three classes.
S = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
T_LOGITS = torch.tensor([[4.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
Y = torch.tensor([0, 2])


def softmax(z: list[float], T: float = 1.0) -> list[float]:
    e = [math.exp(v / T) for v in z]
    return [v / sum(e) for v in e]


def hand_hinton(T: float, alpha: float) -> float:
    """Hinton's loss by hand, with Python floats only."""
    ce = kl = 0.0
    for s, t, y in zip(S.tolist(), T_LOGITS.tolist(), Y.tolist()):
        ce += -math.log(softmax(s)[y])
        ps, pt = softmax(s, T), softmax(t, T)
        kl += sum(q * math.log(q / p) for q, p in zip(pt, ps))
    n = len(Y)
    return (1 - alpha) * ce / n + alpha * T * T * kl / n


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (2.0, 0.9), (4.0, 1.0), (20.0, 0.3)])
def test_hinton_loss_equals_hand_computation(T, alpha):
    assert KD.hinton_loss(S, T_LOGITS, Y, T, alpha).item() == pytest.approx(
        hand_hinton(T, alpha), rel=1e-5
    )


def test_hinton_loss_worked_example():
    # One sample, two classes: student logits [0, 0], teacher [ln 3, 0], label 0, alpha 0.5.
    # T=1: CE = ln 2; p_t = (3/4, 1/4), p_s = (1/2, 1/2); KL = 3/4 ln 1.5 + 1/4 ln 0.5 = 0.130812.
    # T=2: p_t = (sqrt3, 1) / (sqrt3 + 1); KL = 0.036341, times T^2 = 0.145363.
    s, t, y = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0])
    assert KD.hinton_loss(s, t, y, 1.0, 0.5).item() == pytest.approx(
        0.5 * 0.693147 + 0.5 * 0.130812, abs=1e-5
    )
    assert KD.hinton_loss(s, t, y, 2.0, 0.5).item() == pytest.approx(
        0.5 * 0.693147 + 0.5 * 0.145363, abs=1e-5
    )


@pytest.mark.parametrize("loss", KD.LOSSES)
@pytest.mark.parametrize("T", [0.5, 1.0, 8.0])
def test_alpha_zero_is_cross_entropy(loss, T):
    ce = F.cross_entropy(S, Y)
    assert torch.equal(KD.distillation_loss(S, T_LOGITS, Y, loss, T, 0.0), ce)


def test_alpha_one_ignores_labels_and_is_zero_when_student_equals_teacher():
    other = torch.tensor([1, 1])
    assert KD.hinton_loss(S, T_LOGITS, Y, 3.0, 1.0) == KD.hinton_loss(S, T_LOGITS, other, 3.0, 1.0)
    assert KD.hinton_loss(T_LOGITS, T_LOGITS, Y, 3.0, 1.0).item() == pytest.approx(0.0, abs=1e-5)
    assert KD.logit_loss(T_LOGITS, T_LOGITS, Y, 1.0).item() == 0.0


def test_logit_loss_equals_hand_computation():
    mse = (
        sum((a - b) ** 2 for ra, rb in zip(S.tolist(), T_LOGITS.tolist()) for a, b in zip(ra, rb))
        / 6
    )
    ce = F.cross_entropy(S, Y).item()
    assert KD.logit_loss(S, T_LOGITS, Y, 1.0).item() == pytest.approx(mse, rel=1e-6)
    assert KD.logit_loss(S, T_LOGITS, Y, 0.25).item() == pytest.approx(
        0.75 * ce + 0.25 * mse, rel=1e-6
    )


def test_no_gradient_flows_into_teacher_logits():
    s, t = S.clone().requires_grad_(), T_LOGITS.clone().requires_grad_()
    KD.hinton_loss(s, t, Y, 2.0, 0.7).backward()
    assert s.grad is not None and t.grad is None


def test_soft_targets():
    p = KD.soft_targets(T_LOGITS, 4.0)
    assert torch.allclose(p.sum(1), torch.ones(2))
    assert p[0].tolist() == pytest.approx(softmax(T_LOGITS[0].tolist(), 4.0), rel=1e-6)
    # a higher temperature spreads the mass: the top probability falls
    assert (
        KD.soft_targets(T_LOGITS, 20.0).max(1).values < KD.soft_targets(T_LOGITS, 1.0).max(1).values
    ).all()


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("nan"), float("inf"), "4", True])
def test_bad_temperature_raises(bad):
    with pytest.raises(ParameterError, match="TEMPERATURE"):
        KD.check_temperature("TEMPERATURE", bad)
    with pytest.raises(ParameterError):
        KD.hinton_loss(S, T_LOGITS, Y, bad, 0.5)


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("nan"), "0.5", None])
def test_bad_alpha_raises(bad):
    with pytest.raises(ParameterError, match="ALPHA"):
        KD.check_alpha("ALPHA", bad)
    with pytest.raises(ParameterError):
        KD.make_loss_fn(torch.nn.Identity(), "hinton", 2.0, bad)


def test_unknown_loss_raises():
    with pytest.raises(ParameterError, match="LOSS"):
        KD.distillation_loss(S, T_LOGITS, Y, "kl")
    with pytest.raises(ParameterError, match="LOSS"):
        KD.make_loss_fn(torch.nn.Identity(), "mse", 2.0, 0.5)


def test_teacher_logits_cache_equals_teacher():
    torch.manual_seed(0)
    teacher = MLP(16, [8]).eval()
    X = torch.randn(50, 1, 4, 4)
    cache = KD.TeacherLogits(teacher, X, batch_size=7)
    batch = X[torch.tensor([3, 49, 0, 3, 17])]
    with torch.no_grad():
        expected = teacher(batch)
    assert torch.allclose(cache(batch), expected, atol=1e-6)
    assert (cache.hits, cache.misses) == (5, 0)
    fresh = torch.randn(2, 1, 4, 4)  # not in the cache: computed by the teacher
    with torch.no_grad():
        assert torch.allclose(cache(fresh), teacher(fresh), atol=1e-6)
    assert cache.misses == 2


def test_teacher_logits_follows_its_loader_and_stays_exact():
    torch.manual_seed(0)
    teacher = MLP(16, [8]).eval()
    X = torch.randn(50, 1, 4, 4)
    y = torch.randint(0, 10, (50,))
    train = loader(X.numpy(), y.numpy(), batch_size=8, shuffle=True, seed=3)
    follow, search = KD.TeacherLogits(teacher, X, loader=train), KD.TeacherLogits(teacher, X)
    for xb, _ in train:  # the loader's latest batch: one gather, the same logits as the search
        assert torch.equal(follow(xb), search(xb))
    assert (follow.followed, follow.hits, follow.misses) == (len(train), 50, 0)
    assert search.followed == 0
    other = X[torch.tensor([1, 2, 3, 4, 5, 6, 7, 0])]  # not the batch the loader last gave
    assert torch.equal(follow(other), search(other))
    assert follow.followed == len(train)  # found by the search instead
    with pytest.raises(ParameterError, match="loader"):
        KD.TeacherLogits(teacher, X, loader=torch.utils.data.DataLoader(X, batch_size=8))


def test_make_loss_fn_with_cache_or_module_agree():
    torch.manual_seed(0)
    teacher = MLP(16, [8]).eval()
    X = torch.randn(20, 1, 4, 4)
    y = torch.randint(0, 10, (20,))
    logits = torch.randn(20, 10)
    a = KD.make_loss_fn(KD.TeacherLogits(teacher, X), "hinton", 3.0, 0.8)(logits, y, X)
    b = KD.make_loss_fn(teacher, "hinton", 3.0, 0.8)(logits, y, X)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_shifted_copies_moves_pixels_and_keeps_originals():
    X = torch.zeros(30, 1, 8, 8)
    X[:, 0, 4, 4] = 1.0
    out = KD.shifted_copies(X, 2, max_shift=2, seed=0)
    assert out.shape == (90, 1, 8, 8)
    assert torch.equal(out[:30], X)
    pos = out.reshape(90, -1).argmax(1)
    r, c = pos // 8, pos % 8
    assert ((r - 4).abs() <= 2).all() and ((c - 4).abs() <= 2).all()
    assert out.sum(dim=(1, 2, 3)).eq(1).all()  # shifted, not lost
    assert (pos[30:] != 4 * 8 + 4).any()
    assert torch.equal(out, KD.shifted_copies(X, 2, max_shift=2, seed=0))
    assert torch.equal(KD.shifted_copies(X, 0), X)


def test_train_student_repeats_with_a_seed():
    torch.manual_seed(0)
    X = torch.randn(64, 1, 4, 4).numpy()
    y = torch.randint(0, 3, (64,)).numpy()
    dl = loader(X, y, 16, shuffle=True)
    runs = [
        KD.train_student(lambda: MLP(16, [5], n_classes=3), 7, dl, None, 2)[0] for _ in range(2)
    ]
    for p, q in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(p, q)


def test_gap_closed():
    assert KD.gap_closed(0.90, 0.95, 1.00) == pytest.approx(0.5)
    assert KD.gap_closed(0.90, 0.88, 1.00) == pytest.approx(-0.2)
    assert math.isnan(KD.gap_closed(0.95, 0.96, 0.95))


def test_teacher_table():
    tab = lesson.teacher_table(T_LOGITS, torch.tensor([0, 1]), [1.0, 4.0])
    assert len(tab) == 4 and list(tab.columns[:3]) == ["sample", "label", "T"]
    assert tab[["0", "1", "2"]].sum(1).tolist() == pytest.approx([1.0] * 4)


@pytest.mark.parametrize(
    "override,name",
    [
        ({"SWEEP_TEMPERATURES": [0.0]}, "SWEEP_TEMPERATURES"),
        ({"ALPHA": 1.5}, "ALPHA"),
        ({"TEACHER": "resnet"}, "TEACHER"),
        ({"STUDENT_HIDDEN": [0]}, "STUDENT_HIDDEN"),
        ({"EPOCHS": 15}, "EPOCHS"),
        ({"VIEWS": 0}, "VIEWS"),
        ({"TEACHER_RECIPE": {"dropout": 1.0}}, "TEACHER_RECIPE['dropout']"),
        ({"TEACHER_RECIPE": {"max_norm": -1.0}}, "TEACHER_RECIPE['max_norm']"),
        ({"TEACHER_RECIPE": {"optimizer": "sgd"}}, "TEACHER_RECIPE['optimizer']"),
        ({"TEACHER_RECIPE": {"momentum": 0.9}}, "TEACHER_RECIPE"),
        ({"TEACHER_RECIPE": [0.5]}, "TEACHER_RECIPE"),
        ({"STUDENT_SCHEDULE": "step"}, "STUDENT_SCHEDULE"),
        ({"SMALL_HIDDEN": [-1]}, "SMALL_HIDDEN"),
        ({"RANDOM_CONTROL": "yes"}, "RANDOM_CONTROL"),
    ],
)
def test_notebook_bad_input_fails_in_validation(override, name, tmp_path):
    """Bad distillation parameters stop notebook 07 in its validation cell, before any training."""
    from pathlib import Path

    from notebook_runner import assert_fails_in_validation

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "07_knowledge_distillation.ipynb"
    assert_fails_in_validation(nb, tmp_path, name, **override)


def _lab(epochs=4, n=40, views=2, seed=0, snapshots=()):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 1, 4, 4, generator=g)
    y = (X.reshape(n, -1)[:, 0] > 0.5).long()
    Xv, yv = KD.shifted_copies(X, views - 1, 1, seed), y.repeat(views)
    with torch.random.fork_rng():  # the same teacher in every lab of this seed
        torch.manual_seed(seed)
        teacher = MLP(16, [8], n_classes=2)
    test = loader(X.numpy(), y.numpy(), 1000)
    sets = {
        "images": (X, y),
        "views": (Xv, yv),
        "random": (KD.random_images(n * views, (1, 4, 4)), y.repeat(views)),
    }
    lab = KD.StudentLab((1, 4, 4), sets, teacher, epochs, test, test, 8, snapshots=snapshots)
    return lab, teacher


def test_student_lab_gives_every_set_the_same_images_seen():
    lab, _ = _lab(epochs=4, views=2)
    assert lab.passes == {"images": 4, "views": 2, "random": 2}
    with pytest.raises(ParameterError, match="EPOCHS"):
        _lab(epochs=3, views=2)  # 3 passes over the images is 1.5 over the views
    lab.train("short", [3], "views", seed=0, epochs=2)
    assert lab.runs.iloc[-1]["passes"] == 1
    with pytest.raises(ParameterError, match="EPOCHS"):
        lab.train("odd", [3], "views", seed=0, epochs=1)


def test_student_lab_snapshots_are_the_shorter_runs_bit_for_bit():
    fresh, _ = _lab(epochs=8)
    kept, _ = _lab(epochs=8, snapshots=[4, 3])  # 3 is no whole number of passes over the views
    for lab in (kept, fresh):  # the long runs first, as in notebook 07
        lab.train("long", [3], "views", "hinton", 4.0, 0.9, seed=1)
        lab.train("long plain", [3], "images", seed=1)
    assert len(kept._snapped) == 3  # views at 4 epochs; images at 4 and at 3
    for lab in (kept, fresh):
        lab.train("short", [3], "views", "hinton", 4.0, 0.9, seed=1, epochs=4)
        lab.train("short plain", [3], "images", seed=1, epochs=3)
    assert len(kept._snapped) == 1  # images at 4 epochs was never asked for
    for name in ("short", "short plain"):
        a, b = kept.model(name, 1).state_dict(), fresh.model(name, 1).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert np.array_equal(kept.correct(name), fresh.correct(name))
    assert not all(
        torch.equal(kept.model("short", 1).state_dict()[k], v)
        for k, v in kept.model("long", 1).state_dict().items()
    )
    rows = kept.runs.set_index("student")
    assert 0 < rows.loc["short", "train_seconds"] < rows.loc["long", "train_seconds"]
    with pytest.raises(ParameterError, match="snapshots"):
        _lab(snapshots=[0])


def test_student_lab_reuses_identical_runs_and_scores_each_seed():
    lab, _ = _lab()
    a = lab.train("plain", [3], "images", seed=0)
    b = lab.train("plain again", [3], "images", seed=0)  # the same run under another name
    assert a["test_accuracy"] == b["test_accuracy"] and len(lab._done) == 1
    lab.train("plain", [3], "images", seed=1)
    lab.train("distilled", [3], "views", "hinton", 4.0, 0.9, seed=0)
    lab.train("distilled", [3], "views", "hinton", 4.0, 0.9, seed=1)
    assert lab.correct("plain").shape == (2, 40)
    s = lab.summary(["plain", "distilled"])
    assert s.loc["plain", "seeds"] == 2 and s.loc["distilled", "data"] == "views"
    assert s.loc["plain", "mean"] == pytest.approx(lab.correct("plain").mean())
    c = lab.compare([("distilled", "plain")])
    expected = 100 * (lab.correct("distilled").mean() - lab.correct("plain").mean())
    assert c.loc["distilled - plain", "difference"] == pytest.approx(expected)
    with pytest.raises(ParameterError, match="name"):
        lab.correct("nobody")
    with pytest.raises(ParameterError, match="data"):
        lab.train("x", [3], "pixels")


def test_student_lab_distilled_student_matches_a_hand_run():
    """The lab's distilled student is train_student with make_loss_fn on the teacher's cached
    logits."""
    lab, teacher = _lab()
    row = lab.train("d", [3], "images", "hinton", 2.0, 0.5, seed=3)
    X, y = lab.loaders["images"].dataset.tensors
    dl = loader(X.numpy(), y.numpy(), 8, shuffle=True)
    model, _ = KD.train_student(
        lambda: MLP(16, [3], n_classes=2),
        3,
        dl,
        None,
        4,
        KD.make_loss_fn(teacher, "hinton", 2.0, 0.5),
    )
    with torch.no_grad():
        acc = float((model(X).argmax(1) == y).float().mean())
    assert row["test_accuracy"] == pytest.approx(acc)


def test_get_teacher_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path))
    X = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(32) % 10
    args = ("toy", {"train": 32}, X, y, "mlp", [6], [2, 3], 0.5, 1, 0, {"views": 1})
    first, hist, hit = KD.get_teacher(*args)
    again, _, hit2 = KD.get_teacher(*args)
    assert (hit, hit2) == (False, True) and len(hist) == 1
    for p, q in zip(first.parameters(), again.parameters()):
        assert torch.equal(p, q)
    assert any(isinstance(m, torch.nn.Dropout) for m in first.modules())
    cnn = KD.build_teacher("cnn", (1, 28, 28), [1000], [20, 50])
    assert sum(p.numel() for p in cnn.parameters()) == 1286580  # 520 + 25,050 + 1,251,000 + 10,010
    with pytest.raises(ParameterError, match="TEACHER"):
        KD.build_teacher("vit", (1, 28, 28), [10])


def test_random_images_budget_and_gap_interval():
    r = KD.random_images(5, (1, 3, 3), seed=1)
    assert r.shape == (5, 1, 3, 3) and 0 <= float(r.min()) and float(r.max()) <= 1
    assert torch.equal(r, KD.random_images(5, (1, 3, 3), seed=1))
    assert KD.check_budget(100, 10) == 10
    with pytest.raises(ParameterError, match="EPOCHS"):
        KD.check_budget(15, 10)
    assert KD.gap_interval(1.0, 3.0, 0.90, 0.95) == pytest.approx((0.2, 0.6))
    assert KD.gap_interval(1.0, 3.0, 0.95, 0.95) is None


def test_penultimate_and_hint_stage_learn_the_teachers_hidden_layer():
    torch.manual_seed(0)
    teacher = MLP(16, [12], n_classes=2).eval()
    trunk = KD.penultimate(teacher)
    assert len(trunk) == len(teacher) - 1 and trunk[0] is teacher[0]  # shares the layers
    X = torch.rand(64, 1, 4, 4)
    dl = loader(X.numpy(), torch.zeros(64, dtype=torch.long).numpy(), 16, shuffle=True)
    student = MLP(16, [6], n_classes=2)
    before = [p.clone() for p in student[-1].parameters()]
    hist = KD.hint_stage(student, teacher, X, dl, epochs=30, lr=1e-2)
    assert hist["train_loss"].iloc[-1] < 0.5 * hist["train_loss"].iloc[0]
    assert all(
        torch.equal(p, q) for p, q in zip(before, student[-1].parameters())
    )  # output layer untouched
    with pytest.raises(ParameterError, match="model"):
        KD.penultimate(torch.nn.Sequential(torch.nn.Linear(3, 2)))


def test_student_lab_hint_epochs_inside_the_budget():
    lab, _ = _lab(epochs=4, views=2)
    row = lab.train("fitnets", [3], "images", "hinton", 4.0, 0.9, seed=0, hint_epochs=2)
    assert (row["passes"], row["hint_passes"]) == (4, 2)
    plain = lab.train("distilled", [3], "images", "hinton", 4.0, 0.9, seed=0)
    assert plain["hint_passes"] == 0 and len(lab._done) == 2  # a hinted run is another run
    with pytest.raises(ParameterError, match="HINT_EPOCHS"):
        lab.train("too long", [3], "images", "hinton", 4.0, 0.9, seed=0, hint_epochs=4)


@pytest.mark.notebook
def test_notebook_hinton_profile_switches(tmp_path):
    """The switches the paper profile uses (an MLP teacher trained by Hinton et al.'s 2012 recipe
    on freshly jittered images, one view, cosine students, no small, hint or random-input
    students, one seed) run, leave only Hinton's comparison and record the learning curves."""
    from pathlib import Path

    from notebook_runner import run

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "07_knowledge_distillation.ipynb"
    recipe = {
        "dropout": 0.5,
        "input_dropout": 0.2,
        "jitter": 2,
        "max_norm": 2.0,
        "optimizer": "sgd_momentum",
        "lr": 0.5,
        "batch_size": 100,
        "momentum_ramp": 2,
        "lr_decay": 0.5,
    }
    r = run(
        nb,
        tmp_path,
        TEACHER="mlp",
        TEACHER_FC=[32, 32],
        TEACHER_RECIPE=recipe,
        VIEWS=1,
        STUDENT_SCHEDULE="cosine",
        SEEDS=1,
        SMALL_HIDDEN=[],
        SHORT_EPOCHS=0,
        HINT_EPOCHS=0,
        VIEW_STUDENTS=False,
        RANDOM_CONTROL=False,
        SWEEP_TEMPERATURES=[20.0],
        SWEEP_LOGITS=False,
    )
    assert r.status == "ok", r.error
    rec = r.records
    assert [s["student"] for s in rec["main_summary"]] == ["plain", "distilled", "teacher"]
    assert len(rec["comparisons"]) == 1 and rec["chosen_setting"]["T"] == 20.0
    assert rec["split_sizes"]["views"] == rec["split_sizes"]["train"]
    assert not rec["control_summary"]
    assert rec["params"]["teacher"] == 784 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert rec["teacher_recipe"] == {k: v for k, v in recipe.items()}
    curves = {}
    for row in rec["learning_curves"]:
        curves.setdefault(row["model"], []).append(row["epoch"])
    assert curves == {"teacher": [1, 2, 3, 4], "plain": [1, 2, 3, 4], "distilled": [1, 2, 3, 4]}
    epochs = {row["model"]: row["epochs"] for row in rec["epochs_run"]}
    assert epochs == {"teacher": 4, "plain": 4, "distilled": 4}
    assert rec["recipe_core"]["momentum_diff"] <= 1e-12
