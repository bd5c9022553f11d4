"""Unit tests of nbhelpers.lessons.selection: the optimism of a configuration chosen by its test
score, against the configuration chosen by cross-validation (notebook 01)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nbhelpers.core.params import ParameterError
from nbhelpers.lessons import selection

# 3 configurations; 4 selection images and 4 untouched images (True: right)
SELECTION = np.array([[1, 1, 0, 0], [1, 0, 1, 1], [0, 1, 1, 0]], dtype=bool)
UNTOUCHED = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]], dtype=bool)


def _table(**kw):
    return selection.selection_optimism(SELECTION, UNTOUCHED, cv_choice=0, sizes=[4, 1], **kw)


def test_check_sizes_zero_is_the_whole_split_and_too_many_is_refused():
    assert selection.check_selection_sizes("SELECTION_SIZES", [0, 100, 10], 500) == [500, 100, 10]
    for bad in ([501], [-1], [], "100", [1.5], None):
        with pytest.raises(ParameterError, match="SELECTION_SIZES"):
            selection.check_selection_sizes("SELECTION_SIZES", bad, 500)


def test_known_table_whole_split():
    row = _table().iloc[0]
    # configuration 1 scores 3/4 on the selection images, best; on the untouched ones 1/4
    assert row["images"] == 4 and row["subsets"] == 1 and row["same as CV"] == 0.0
    assert row["selected: selection score"] == 0.75 and row["selected: untouched score"] == 0.25
    assert row["optimism"] == pytest.approx(50.0)
    assert row["CV pick: gap"] == pytest.approx(50.0 - 75.0)  # configuration 0: 2/4 and 3/4
    assert row["paired optimism"] == pytest.approx(75.0)  # (75 - 50) - (25 - 75)
    assert row["selected minus CV pick"] == pytest.approx(25.0 - 75.0)


def test_known_table_one_image_subsets_choose_the_first_right_configuration():
    row = _table().iloc[1]
    # each image alone: the first configuration right on it wins (0, 0, 1, 1 for the 4 images),
    # its score there is 1; on the untouched split those picks score (3/4 + 3/4 + 1/4 + 1/4) / 4
    assert row["images"] == 1 and row["subsets"] == 4 and row["same as CV"] == 0.5
    assert row["selected: selection score"] == 1.0 and row["selected: untouched score"] == 0.5
    assert row["optimism"] == pytest.approx(50.0)
    assert row["selected minus CV pick"] == pytest.approx(-25.0)


def test_intervals_hold_their_estimate_and_repeat_with_the_seed():
    t = _table(n_boot=500, seed=3)
    for name in ("optimism", "CV pick: gap", "paired optimism", "selected minus CV pick"):
        assert (t[f"{name} low"] <= t[name] + 1e-9).all() and (t[name] <= t[f"{name} high"]).all()
    assert t.equals(_table(n_boot=500, seed=3))
    assert list(t.columns) == selection.OPTIMISM_COLUMNS


def test_identical_configurations_have_no_optimism_beyond_the_cv_pick():
    same = np.repeat(SELECTION[:1], 3, axis=0)
    t = selection.selection_optimism(
        same, np.repeat(UNTOUCHED[:1], 3, axis=0), 2, [4, 2], n_boot=200
    )
    assert (t["paired optimism"] == 0).all() and (t["paired optimism low"] == 0).all()
    assert (t["paired optimism high"] == 0).all() and (t["optimism"] == t["CV pick: gap"]).all()
    assert (t["paired optimism verdict"] == "includes zero").all()


def test_many_equal_configurations_on_small_subsets_are_optimistic():
    """50 configurations right at random on 80% of the images: choosing the best of them on 100
    images reports several points too much; the CV pick (one fixed configuration) does not."""
    rng = np.random.default_rng(0)
    sel, unt = rng.random((50, 2000)) < 0.8, rng.random((50, 2000)) < 0.8
    t = selection.selection_optimism(sel, unt, cv_choice=0, sizes=[2000, 100], n_boot=1000)
    small = t.iloc[1]
    assert small["subsets"] == 20 and small["optimism"] > 5
    assert small["optimism verdict"] == "above zero" and small["optimism low"] > 0
    assert small["CV pick: gap low"] < 0 < small["CV pick: gap high"]
    assert t.iloc[0]["optimism"] < small["optimism"]  # the bigger the set, the smaller


def test_pairing_cancels_the_noise_configurations_share():
    """30 configurations that agree on all but 5% of the images (as models of one family do):
    on 100-image test sets the unpaired interval of the optimism still includes zero, the paired
    one (leads over the CV pick, image by image) does not."""

    def family(rng, images):
        return (rng.random(images) < 0.8) ^ (rng.random((30, images)) < 0.05)

    rng = np.random.default_rng(0)
    t = selection.selection_optimism(family(rng, 2000), family(rng, 2000), 0, [100], n_boot=1000)
    row = t.iloc[0]
    assert row["optimism verdict"] == "includes zero" and row["optimism low"] < 0
    assert row["paired optimism verdict"] == "above zero" and row["paired optimism low"] > 0


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"correct_untouched": UNTOUCHED[:2]}, "correct_untouched"),
        ({"correct_selection": SELECTION.astype(int)}, "correct_selection"),
        ({"cv_choice": 3}, "cv_choice"),
        ({"sizes": [5]}, "sizes"),
        ({"sizes": []}, "sizes"),
        ({"n_boot": 10}, "n_boot"),
    ],
)
def test_bad_input_names_the_argument(kw: dict, name: str):
    args = {
        "correct_selection": SELECTION,
        "correct_untouched": UNTOUCHED,
        "cv_choice": 0,
        "sizes": [4],
        **kw,
    }
    with pytest.raises(ParameterError, match=name):
        selection.selection_optimism(**args)


def test_selection_summary_rows():
    f = selection.selection_summary(_table(n_boot=200), loop_matches_refit=True)
    assert f["context"].str.len().max() <= 50 and f.index.str.len().max() <= 50
    v = f["value"]
    assert v["loop's fit of the CV pick matches the refit"] is True
    assert v["selection images"] == 4 and v["test-selected is the CV pick"] is False
    assert v["test-selected: test score"] == 0.75 and v["test-selected: untouched score"] == 0.25
    assert v["optimism, whole test split"] == 50.0 and v["optimism, smallest subsets"] == 50.0
    assert v["paired optimism, whole test split"] == 75.0
    assert v["optimism verdict, whole test split"] == "includes zero"  # 3/4 of 4 against 1/4 of 4
    assert v["paired optimism verdict, smallest subsets"] == "above zero"
    assert v["selected minus CV pick, smallest subsets"] == -25.0
    assert v["smallest subsets: images"] == 1 and v["smallest subsets: subsets"] == 4
    assert v["smallest subsets: same as the CV pick"] == 0.5
    assert "95% interval [" in f.loc["optimism, whole test split", "context"]


@pytest.mark.parametrize("sizes", [[-1], [100, 1.5], "100", []])
def test_notebook_refuses_bad_selection_sizes_in_validation(sizes, tmp_path: Path):
    from notebook_runner import assert_fails_in_validation

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "01_grid_search.ipynb"
    assert_fails_in_validation(nb, tmp_path, "SELECTION_SIZES", SELECTION_SIZES=sizes)
