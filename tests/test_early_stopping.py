"""nbhelpers.techniques.hpo.early_stopping: successive halving, Hyperband and full-budget random
search on
learning curves, checked against hand-worked curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import hpo

SPACE = {"lr": {"low": 1e-4, "high": 1e-1, "log": True, "int": False}}


def _curves(final: np.ndarray, epochs: int = 9) -> hpo.CurveObjective:
    """One axis of len(final) learning rates; curve i rises linearly to final[i] at ``epochs``
    from final[i] - 0.2 + 0.02 i at epoch 1, so early rankings can mislead."""
    n = len(final)
    start = final - 0.2 + 0.02 * np.arange(n)
    t = np.arange(1, epochs + 1) / epochs
    curves = start[:, None] + (final - start)[:, None] * t[None, :]
    axes = {"lr": np.geomspace(1e-4, 1e-1, n)}
    return hpo.CurveObjective(SPACE, axes, curves)


def test_curve_objective_looks_up_epochs_and_cells():
    obj = _curves(np.linspace(0.5, 0.9, 5))
    assert obj.epochs == 9 and obj.size == 5 and obj.best == pytest.approx(0.9)
    assert obj.cell({"lr": 1e-4}) == (0,) and obj.cell({"lr": 0.09}) == (4,)
    assert obj.at((4,)) == pytest.approx(0.9) and obj.at((0,), 1) == pytest.approx(0.3 + 0.2 / 9)
    with pytest.raises(ValueError, match="epochs"):
        obj.at((0,), 10)


def test_halving_spends_resumed_epochs_and_keeps_the_best_third():
    obj = _curves(np.linspace(0.5, 0.9, 9))
    h = hpo.halving_history(obj, n=9, r_min=1, eta=3, seed=0)
    # rungs at 1, 3 and 9 epochs; survivors resume: 9 x 1, then 3 x (3 - 1), then 1 x (9 - 3)
    assert [s for s, _ in h] == [9, 9 + 6, 9 + 6 + 6]
    cells = set(hpo.early_stopping._draw(obj, 9, np.random.RandomState(0)))
    assert h[-1][1] == pytest.approx(max(obj.at(c) for c in cells))  # ranks agree here


def test_hyperband_brackets_follow_li_et_al():
    obj = _curves(np.linspace(0.5, 0.9, 9))
    h = hpo.hyperband_history(obj, r_min=1, eta=3, seed=1)
    # R = 9, s_max = 2: brackets of 9 at 1 epoch (9 + 6 + 6 = 21), 5 at 3 (15 + 6 = 21) and 3 at 9
    # epochs (27); the spend grows monotonically and ends at their sum
    spent = [s for s, _ in h]
    assert spent == sorted(spent) and len(h) == 3 + 2 + 1
    assert spent[2] == 21 and spent[4] == 21 + 5 * 3 + 1 * 6 and spent[-1] == spent[4] + 3 * 9
    assert all(q <= obj.best for _, q in h)


def test_full_budget_random_search_and_epochs_to_target():
    obj = _curves(np.linspace(0.5, 0.9, 5))
    h = hpo.full_budget_history(obj, trials=4, seed=2)
    assert [s for s, _ in h] == [9, 18, 27, 36]
    quality = [q for _, q in h]
    assert quality == list(np.maximum.accumulate(quality))  # full budget: never a worse pick
    target = quality[-1]
    first = next(i for i, q in enumerate(quality) if q >= target)
    assert hpo.epochs_to_target(h, target) == 9 * (first + 1)
    assert hpo.epochs_to_target(h, 2.0) is None
    t = hpo.epochs_table({"random": [h, h]}, target)
    assert t.loc["random", "reached"] == 2 and t.loc["random", "mean_epochs"] == 9 * (first + 1)
    c = hpo.curves_at_budget({"random": [h]}, [5, 9, 40])
    assert math.isnan(c.loc[0, "mean"]) and c.loc[2, "mean"] == pytest.approx(quality[-1])


def test_check_halving():
    assert hpo.check_halving(3, 1, 5) == (3, 1)
    with pytest.raises(ParameterError, match="HALVING_ETA"):
        hpo.check_halving(1, 1, 5)
    with pytest.raises(ParameterError, match="HALVING_MIN_EPOCHS"):
        hpo.check_halving(3, 6, 5)


def test_budgets_repeat_brackets_until_spent():
    obj = _curves(np.linspace(0.5, 0.9, 9))
    once = hpo.halving_history(obj, 9, 1, 3, seed=0)
    more = hpo.halving_history(obj, 9, 1, 3, seed=0, budget=50)
    assert more[: len(once)] == once and more[-1][0] == 3 * 21 >= 50
    hb = hpo.hyperband_history(obj, 1, 3, seed=1, budget=100)
    assert hb[-1][0] == 2 * 69  # two whole Hyperband iterations of 69 epochs


def test_rung_ranking_measures_how_early_epochs_rank_the_cells():
    # curves that keep their order: every rung ranks the cells as the full budget does
    same = np.linspace(0.5, 0.9, 6)[:, None] * np.linspace(0.5, 1.0, 9)[None, :]
    obj = hpo.CurveObjective(SPACE, {"lr": np.geomspace(1e-4, 1e-1, 6)}, same)
    t = hpo.rung_ranking(obj, 1, 3)
    assert t.epochs.tolist() == [1, 3]  # 9 epochs is the full budget, not a rung
    assert t.spearman.tolist() == pytest.approx([1.0, 1.0])
    assert t.best_cell_rank.tolist() == [1, 1] and t.kept.tolist() == [2, 2]
    assert t.best_cell_kept.all()
    # reversed at epoch 1 (the final best starts last), in order from epoch 3 on
    flip = same.copy()
    flip[:, 0] = flip[::-1, 0]
    t = hpo.rung_ranking(hpo.CurveObjective(SPACE, {"lr": np.geomspace(1e-4, 1e-1, 6)}, flip),
                         1, 3)
    assert t.spearman.iloc[0] == pytest.approx(-1.0) and t.best_cell_rank.iloc[0] == 6
    assert t.best_cell_kept.tolist() == [False, True]
    with pytest.raises(ParameterError, match="HALVING_ETA"):
        hpo.rung_ranking(obj, 1, 1)
