"""nbhelpers.params: every checker accepts what is allowed and names the parameter otherwise."""

import pytest

from nbhelpers.params import (
    ParameterError,
    check_bool,
    check_choice,
    check_choices,
    check_device,
    check_float,
    check_fraction,
    check_int,
    check_list,
    check_positive,
    check_seed,
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
