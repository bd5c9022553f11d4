"""nbhelpers.core.record: values go into a notebook's outputs and come back equal."""

import math

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from nbhelpers.core.record import (
    MIME_TYPE,
    is_timing,
    read,
    read_notebook,
    to_jsonable,
    without_timings,
)


def test_to_jsonable():
    df = pd.DataFrame({"a": [1, 2]}, index=pd.Index(["x", "y"], name="model"))
    assert to_jsonable(df) == [{"model": "x", "a": 1}, {"model": "y", "a": 2}]
    assert to_jsonable(
        {"n": np.int64(3), "f": np.float32(0.5), "arr": np.arange(3), "nan": math.nan}
    ) == {"n": 3, "f": 0.5, "arr": [0, 1, 2], "nan": None}
    assert to_jsonable(pd.Series({"a": 1.5})) == {"a": 1.5}
    with pytest.raises(TypeError, match="cannot record"):
        to_jsonable(object())


def test_round_trip_through_a_kernel(tmp_path):
    values = {"acc": 0.93, "sizes": {"train": 7}, "names": ["a", "b"], "flag": True, "none": None}
    src = "from nbhelpers.core.record import record\n" + "\n".join(
        f"record({k!r}, {v!r})" for k, v in values.items()
    )
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(src), nbformat.v4.new_code_cell("record('acc', 0.5)")]
    )
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    assert read(path) == {**values, "acc": 0.5}  # a later record of a name wins
    assert MIME_TYPE in nb.cells[0].outputs[0]["data"]
    assert nb.cells[0].outputs[0]["data"]["text/plain"] == "acc = 0.93"


def test_read_ignores_other_outputs():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", data={"text/plain": "1"})]
    assert read_notebook(nb) == {}


def test_is_timing():
    assert all(map(is_timing, ["train_seconds", "latency_mlp_b1_ms", "speedup_b256", "foo_ms"]))
    assert not any(map(is_timing, ["mlp_test_accuracy", "mlp_bytes", "comparison"]))


def test_without_timings_is_recursive():
    recs = {
        "acc": 1,
        "train_seconds": 2,
        "table": [{"model": "a", "latency_ms_b1": 3, "speedup_b1": 1, "bytes": 4}],
    }
    assert without_timings(recs) == {"acc": 1, "table": [{"model": "a", "bytes": 4}]}


def test_without_timings_drops_timed_fact_rows():
    facts = [
        {"fact": "speed of lenet5 / mlp, batch 64", "value": 0.2, "context": "timed side by side"},
        {"fact": "fit", "value": 3.0, "context": "seconds, timed"},
        {"fact": "latency_ms at batch 1", "value": 1.0, "context": ""},
        {"fact": "mlp above chance", "value": True, "context": "95% interval"},
    ]
    assert without_timings({"facts": facts}) == {"facts": [facts[3]]}


def test_read_takes_records_of_notebooks_executed_before_the_layers():
    import nbformat

    from nbhelpers.core.record import LEGACY_MIME_TYPES, read_notebook

    out = nbformat.v4.new_output(
        "display_data", data={LEGACY_MIME_TYPES[0]: {"name": "acc", "value": 0.5}}
    )
    cell = nbformat.v4.new_code_cell("record('acc', 0.5)", outputs=[out])
    assert read_notebook(nbformat.v4.new_notebook(cells=[cell])) == {"acc": 0.5}
