"""nbhelpers.reporting.runner and .pages: runs notebooks, keeps the last good report, shows
failures in the index."""

import json
from pathlib import Path

import nbformat
import pytest

from nbhelpers.core.record import read
from nbhelpers.reporting.pages import wrappable_headers
from nbhelpers.reporting.runner import (
    RunResult,
    expected_seconds,
    list_notebooks,
    load_parameters,
    longest_first,
    main,
    save_run,
)


def _notebook(path, body: str):
    params = nbformat.v4.new_code_cell("VALUE: int = 1  # a parameter")
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(
        cells=[
            params,
            nbformat.v4.new_code_cell("from nbhelpers.core.record import record\n" + body),
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, str(path))


@pytest.mark.notebook
def test_failure_shown_and_last_good_kept(tmp_path):
    src, out = tmp_path / "nbs", tmp_path / "reports"
    src.mkdir()
    _notebook(src / "good.ipynb", "record('value', VALUE * 10)")
    _notebook(src / "bad.ipynb", "record('before', 1)\nraise RuntimeError('deliberate failure')")
    (tmp_path / "p.yaml").write_text("good: {VALUE: 4}\n")

    assert (
        main(
            [
                "--notebooks-dir",
                str(src),
                "--out",
                str(out),
                "--params",
                str(tmp_path / "p.yaml"),
                "--jobs",
                "2",
            ]
        )
        == 1
    )
    index = (out / "index.html").read_text()
    assert "RuntimeError: deliberate failure" in index and index.count('class="failed"') == 1
    assert read(out / "good.ipynb") == {"value": 40} and (out / "good.html").exists()
    assert (out / "bad.failed.ipynb").exists() and not (out / "bad.ipynb").exists()
    runs = json.loads((out / "runs.json").read_text())
    assert runs["bad"]["latest"]["records"] == {"before": 1} and "last_good" not in runs["bad"]

    # the good notebook breaks: its last good report and values survive, the failure is shown
    good_html = (out / "good.html").read_bytes()
    _notebook(src / "good.ipynb", "raise ValueError('broken now')")
    assert main(["good", "--notebooks-dir", str(src), "--out", str(out)]) == 1
    assert (
        read(out / "good.ipynb") == {"value": 40} and (out / "good.html").read_bytes() == good_html
    )
    index = (out / "index.html").read_text()
    assert "ValueError: broken now" in index and "last good run" in index and "value" in index

    # fixed again: the failed copy goes, the report is replaced
    _notebook(src / "good.ipynb", "record('value', VALUE + 1)")
    assert main(["good", "--notebooks-dir", str(src), "--out", str(out)]) == 0
    assert read(out / "good.ipynb") == {"value": 2} and not (out / "good.failed.ipynb").exists()


def test_selection_and_parameters(tmp_path):
    for stem in ("00_a", "01_b"):
        _notebook(tmp_path / f"{stem}.ipynb", "")
    assert [p.stem for p in list_notebooks(tmp_path)] == ["00_a", "01_b"]
    assert [p.stem for p in list_notebooks(tmp_path, ["01"])] == ["01_b"]
    with pytest.raises(SystemExit, match="no notebook named 'zz'"):
        list_notebooks(tmp_path, ["zz"])
    (tmp_path / "00_a.yaml").write_text("X: 1\n")
    assert load_parameters("00_a", params_dir=tmp_path) == {"X": 1}
    assert load_parameters("01_b", params_dir=tmp_path) == {}


def test_longest_notebook_starts_first(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "| notebook | target | measured |\n|---|---|---|\n| 00_a | a target | 5 |\n\n"
        "## Run times\n\n| notebook | status | wall seconds | error |\n|---|---|---|---|\n"
        "| 00_a | ok | 20.0 |  |\n| 01_b | ok | 300.5 |  |\n| 02_c | failed | 900 | boom |\n"
    )
    out = tmp_path / "reports"
    out.mkdir()
    stems = ["00_a", "01_b", "02_c", "03_d"]
    # a fresh clone: the benchmark's table (failed runs and other tables are not run times)
    assert expected_seconds(stems, out, doc) == {
        "00_a": 20.0,
        "01_b": 300.5,
        "02_c": 0.0,
        "03_d": 0.0,
    }
    # a run in this reports folder answers before the benchmark
    save_run(out, RunResult("00_a", "ok", 400.0))
    save_run(out, RunResult("03_d", "failed", 999.0))
    seconds = expected_seconds(stems, out, doc)
    assert seconds == {"00_a": 400.0, "01_b": 300.5, "02_c": 0.0, "03_d": 0.0}
    order = longest_first([Path(f"{s}.ipynb") for s in stems], seconds)
    assert [p.stem for p in order] == ["00_a", "01_b", "02_c", "03_d"]
    assert [p.stem for p in longest_first([Path("x.ipynb"), Path("y.ipynb")], {"y": 1.0})] == [
        "y",
        "x",
    ]
    assert expected_seconds(["00_a"], tmp_path / "none", tmp_path / "missing.md") == {"00_a": 0.0}


def test_cli_rejects_bad_jobs(tmp_path):
    with pytest.raises(SystemExit):
        main(["--jobs", "0", "--notebooks-dir", str(tmp_path)])


def test_html_hides_plumbing_input_and_loads_mathjax_locally(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    from nbhelpers.reporting.pages import HIDE_INPUT_TAG, render_html

    plumbing = new_code_cell(
        "PLUMBING_SOURCE = 1",
        metadata={"tags": [HIDE_INPUT_TAG]},
        outputs=[new_output("stream", name="stdout", text="plumbing output\n")],
    )
    lesson = new_code_cell("LESSON_SOURCE = 2")
    nb = new_notebook(
        cells=[new_markdown_cell("# T\n\n$y = W x + b$"), plumbing, lesson],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    nbformat.write(nb, str(tmp_path / "t.ipynb"))
    render_html(tmp_path / "t.ipynb", tmp_path / "t.html")
    page = (tmp_path / "t.html").read_text()
    assert "PLUMBING_SOURCE" not in page and "plumbing output" in page and "LESSON_SOURCE" in page
    assert 'src="mathjax/MathJax.js?config=' in page
    assert 'webFont: "STIX-Web"' in page  # the font that ships; without it a prime fails to render
    assert (
        '<script src="http' not in page
    )  # nothing loads from the network (mermaid only on demand)
    assert (tmp_path / "mathjax" / "MathJax.js").exists()


def test_a_relative_reports_folder_is_the_one_asked_for(tmp_path, monkeypatch):
    """papermill changes this process's working directory to the notebook's folder while it runs
    (and two notebooks run at once leave it there); a relative out folder must still be the one
    named when the command began. A stand-in for papermill does what it does with the paths."""
    import os
    import shutil

    import papermill

    from nbhelpers.reporting.runner import run_notebook

    def fake_execute(src, out, cwd=None, **_):
        os.chdir(cwd)  # left changed, as when another thread's papermill restores it late
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, out)  # papermill writes the output path relative to its cwd

    (tmp_path / "nbs").mkdir()
    _notebook(tmp_path / "nbs" / "a.ipynb", "record('value', VALUE)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    result = run_notebook(Path("nbs/a.ipynb"), Path("out"), html_out=False)
    assert result.status == "ok", result.error
    assert (tmp_path / "out" / "a.ipynb").exists() and not (tmp_path / "nbs" / "out").exists()


def test_wide_table_headers_can_wrap_at_underscores():
    page = (
        '<table class="dataframe"><thead><tr><th></th><th>accuracy_delta_points</th>'
        '<th class="x">p_mcnemar</th><th>plain</th><th><b>a_b</b></th></tr></thead>'
        "<tbody><tr><th>dense_fp32</th><td>a_b</td></tr></tbody></table>"
    )
    out = wrappable_headers(page)
    assert "<th>accuracy_<wbr>delta_<wbr>points</th>" in out
    assert '<th class="x">p_<wbr>mcnemar</th>' in out and "<th>plain</th>" in out
    assert "<th>dense_<wbr>fp32</th>" in out
    assert "<td>a_b</td>" in out and "<b>a_b</b>" in out  # data cells and markup untouched


def test_a_misspelt_parameter_stops_every_run_before_any_work(tmp_path, capsys):
    """--params naming a parameter a notebook lacks: exit 2, the error names the closest
    parameter, and no notebook runs (the reports folder is not even created)."""
    src, out = tmp_path / "nbs", tmp_path / "reports"
    src.mkdir()
    _notebook(src / "a.ipynb", "record('value', VALUE)")
    _notebook(src / "b.ipynb", "record('value', VALUE)")
    (tmp_path / "p.yaml").write_text("a: {VALUE: 2}\nb: {VALEU: 3}\n")
    argv = ["--notebooks-dir", str(src), "--out", str(out), "--params", str(tmp_path / "p.yaml")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown parameter 'VALEU': not a parameter of b: did you mean VALUE?" in err
    assert not out.exists()
