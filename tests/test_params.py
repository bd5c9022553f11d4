"""nbhelpers.core.params: every checker accepts what is allowed and names the parameter
otherwise."""

import pytest

from nbhelpers.core.params import (
    ParameterError,
    UnknownParameterError,
    check_bool,
    check_choice,
    check_choices,
    check_device,
    check_float,
    check_fraction,
    check_injected,
    check_int,
    check_list,
    check_names,
    check_positive,
    check_seed,
    notebook_parameters,
)


def test_error_message_names_parameter_value_and_allowed():
    with pytest.raises(ParameterError) as e:
        check_choice("DATASET", "cifar", ["mnist5k", "digits"])
    msg = str(e.value)
    assert msg == "parameter DATASET='cifar' is not allowed: expected one of 'mnist5k', 'digits'"
    assert (e.value.name, e.value.value) == ("DATASET", "cifar")
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("value", [-1, 1.5, True, "3", None, 2**32])
def test_seed_rejects(value):
    with pytest.raises(ParameterError, match="SEED"):
        check_seed("SEED", value)


def test_seed_accepts():
    assert check_seed("SEED", 0) == 0 and check_seed("SEED", 2**32 - 1) == 2**32 - 1


def test_int_bounds_message():
    with pytest.raises(ParameterError, match=r"EPOCHS=0 .* an integer >= 1"):
        check_int("EPOCHS", 0, minimum=1)
    assert check_int("N", 5, 1, 5) == 5


@pytest.mark.parametrize("value", [0, 1, -0.1, 1.2, float("nan"), "0.5"])
def test_fraction_is_open_interval(value):
    with pytest.raises(ParameterError, match=r"in \(0.0, 1.0\)"):
        check_fraction("TARGET_SPARSITY", value)


def test_float_inclusive_bounds():
    assert check_float("ALPHA", 0, 0, 1) == 0.0 and check_float("ALPHA", 1, 0, 1) == 1.0
    with pytest.raises(ParameterError, match=r"ALPHA=1.5 .* in \[0, 1\]"):
        check_float("ALPHA", 1.5, 0, 1)
    with pytest.raises(ParameterError, match="> 0"):
        check_positive("LR", 0)


def test_lists():
    assert check_list("BITS", [8, 4], lambda n, v: check_int(n, v, 2, 16)) == [8, 4]
    with pytest.raises(ParameterError, match=r"BITS\[1\]=1"):
        check_list("BITS", [8, 1], lambda n, v: check_int(n, v, 2, 16))
    with pytest.raises(ParameterError, match="at least 1"):
        check_list("BITS", [], lambda n, v: v)
    assert check_choices("SCHEDULES", ["a"], ["a", "b"]) == ["a"]
    with pytest.raises(ParameterError, match="'c' is not"):
        check_choices("SCHEDULES", ["a", "c"], ["a", "b"])
    with pytest.raises(ParameterError, match="non-empty list"):
        check_choices("SCHEDULES", [], ["a", "b"])


def test_device():
    import torch

    assert check_device("DEVICE", "cpu") == "cpu"
    assert check_device("DEVICE", "auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ParameterError, match="DEVICE='tpu'"):
        check_device("DEVICE", "tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="CUDA is not available"):
            check_device("DEVICE", "cuda")


def test_bool():
    assert check_bool("ENTROPY_CODING", False) is False
    with pytest.raises(ParameterError, match="ENTROPY_CODING=1 .* True or False"):
        check_bool("ENTROPY_CODING", 1)


def test_unknown_name_names_the_closest_and_every_parameter():
    with pytest.raises(UnknownParameterError) as e:
        check_names(["SEED", "TARGET_SPARCITY"], ["SEED", "TARGET_SPARSITY", "LIMIT"], "04_x")
    msg = str(e.value)
    assert msg == (
        "unknown parameter 'TARGET_SPARCITY': not a parameter of 04_x: did you mean "
        "TARGET_SPARSITY? its parameters are LIMIT, SEED, TARGET_SPARSITY"
    )
    assert (e.value.name, e.value.closest) == ("TARGET_SPARCITY", "TARGET_SPARSITY")
    assert isinstance(e.value, ParameterError)


def test_unknown_name_with_nothing_close_gives_no_guess():
    with pytest.raises(
        UnknownParameterError, match="not a parameter of nb: its parameters are A, B"
    ):
        check_names(["ZZZZZZ"], ["A", "B"], "nb")
    check_names([], ["A"], "nb")  # nothing given, nothing refused
    check_names(["A", "B"], ["A", "B"], "nb")


def test_notebook_parameters_reads_the_tagged_cell(tmp_path):
    import nbformat

    first = nbformat.v4.new_code_cell("X: int = 0  # not the parameters cell")
    cell = nbformat.v4.new_code_cell("A: int = 1  # one\nB: list = [1]\nc = A + 1")
    cell.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[first, cell])
    nbformat.write(nb, str(tmp_path / "n.ipynb"))
    assert notebook_parameters(tmp_path / "n.ipynb") == ["A", "B"]
    nbformat.write(nbformat.v4.new_notebook(cells=[first]), str(tmp_path / "m.ipynb"))
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        notebook_parameters(tmp_path / "m.ipynb")


def _history(*cells: str) -> dict:
    """A notebook namespace after running ``cells`` in IPython: its ``In`` and annotations."""
    ns: dict = {"In": [""]}
    for src in cells:
        ns["In"].append(src)
        exec(src, ns)
    return ns


def test_check_injected_refuses_a_name_papermill_injected_that_is_no_parameter():
    ns = _history(
        "import math",
        "TEMPERATURE: float = 4.0\nSEEDS: int = 2",
        "# Parameters\nTEMPERATUR = 8.0\n",
    )
    with pytest.raises(UnknownParameterError, match="did you mean TEMPERATURE"):
        check_injected(ns, "07_x")


def test_check_injected_accepts_known_names_and_other_cells():
    known = "TEMPERATURE: float = 4.0\nSEEDS: int = 2"
    check_injected(_history(known, "# Parameters\nTEMPERATURE = 8.0\nSEEDS = 3\n"), "07_x")
    check_injected(_history(known), "07_x")  # nothing injected
    # a later cell of the lesson that assigns results is not an injection
    check_injected(_history(known, "# Parameters\nSEEDS = 3", "split = [SEEDS]\nt = 1"), "07_x")
    # an injection before the parameters cell was last run does not count against this run
    check_injected(_history("# Parameters\nOLD = 1", known), "07_x")
    check_injected({"__annotations__": {"A": int}}, "nb")  # outside IPython: no history
