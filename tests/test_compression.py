"""nbhelpers.techniques.compression: the sparse int8 artifact round-trips exactly; the entropy
coders count right; the pipeline's tables. nbhelpers.lessons.compression_pipeline: the Pareto merge
of executed reports, the search's front against the hand-built artifact and the facts of a run."""

import math
import re
import warnings

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nbhelpers.core.models import MLP
from nbhelpers.core.params import ParameterError
from nbhelpers.core.record import MIME_TYPE
from nbhelpers.lessons.compression_pipeline import (
    executed_records,
    front_table,
    front_target,
    pareto_board,
    single_technique_points,
    summary,
)
from nbhelpers.measure import leaderboard
from nbhelpers.measure.facts import CONTEXT_WIDTH
from nbhelpers.measure.targets import target
from nbhelpers.techniques import compression
from nbhelpers.techniques.compression import (
    coding_table,
    entropy_bits,
    huffman_bits,
    int8_conv_weights,
    int8_linears,
    int8_model,
    load_artifact,
    nonzero_values,
    pack_int8_sparse,
    save_artifact,
    stage_steps,
    unpack_float_mlp,
    unpack_int8,
    unpack_int8_mlp,
    with_entropy_stage,
)


def _dynamic(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


@pytest.fixture()
def sparse_int8():
    torch.manual_seed(0)
    m = MLP(64, hidden=[16, 8])
    with torch.no_grad():
        for lin in (m[1], m[3], m[5]):
            lin.weight[torch.rand_like(lin.weight) < 0.8] = 0  # 80% zeros
    return m, _dynamic(m)


@pytest.mark.parametrize("entropy", [False, True])
def test_artifact_round_trip_gives_identical_int8_model(sparse_int8, tmp_path, entropy):
    _, q = sparse_int8
    path = tmp_path / "a.bin"
    nbytes = save_artifact(pack_int8_sparse(q), path, entropy_coding=entropy)
    assert nbytes == path.stat().st_size
    arrays = load_artifact(path)
    back = unpack_int8_mlp(arrays)
    qs, bs = int8_linears(q), int8_linears(back)
    floats = [layer for layer in unpack_float_mlp(arrays) if isinstance(layer, nn.Linear)]
    for a, b, f in zip(qs, bs, floats):
        assert torch.equal(a.weight().int_repr(), b.weight().int_repr())
        assert a.weight().q_scale() == b.weight().q_scale() and torch.equal(a.bias(), b.bias())
        assert torch.allclose(a.weight().dequantize(), f.weight, rtol=0, atol=1e-7)
    x = torch.randn(5, 64)
    assert torch.equal(q(x), back(x))


def test_entropy_coding_makes_it_smaller(sparse_int8, tmp_path):
    _, q = sparse_int8
    arrays = pack_int8_sparse(q)
    raw = save_artifact(arrays, tmp_path / "raw", False)
    coded = save_artifact(arrays, tmp_path / "xz", True)
    assert coded < raw
    nnz = sum(len(arrays[k]) for k in arrays if k.endswith(".values"))
    assert nnz == sum(int((m.weight().int_repr() != 0).sum()) for m in int8_linears(q))
    assert nnz <= sum(
        int((layer.weight != 0).sum()) for layer in sparse_int8[0] if isinstance(layer, nn.Linear)
    )


def _sparse_caffe_lenet5() -> nn.Module:
    from nbhelpers.core.models import build_model

    torch.manual_seed(1)
    m = build_model("lenet5_caffe")
    with torch.no_grad():
        for layer in m:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                layer.weight[torch.rand_like(layer.weight) < 0.9] = 0
    return m.eval()


def test_conv_weights_are_rounded_to_int8_with_one_scale():
    m = _sparse_caffe_lenet5()
    r = int8_conv_weights(m)
    for a, b in ((m[0], r[0]), (m[2], r[2])):
        s = b.int8_scale
        assert s == pytest.approx(float(a.weight.detach().abs().max()) / 127, rel=1e-6)
        q = b.weight / s
        assert torch.allclose(q, q.round(), atol=1e-3) and float(q.abs().max()) <= 127.0001
        assert not b.weight[a.weight == 0].any()  # zeros stay zero (tiny weights may join them)
        assert float((b.weight - a.weight).abs().max()) <= s / 2 + 1e-7  # round to nearest
    assert torch.equal(r[5].weight, m[5].weight) and not hasattr(m[0], "int8_scale")


@pytest.mark.parametrize("entropy", [False, True])
def test_conv_artifact_round_trip_on_a_fresh_model(tmp_path, entropy):
    """Caffe's LeNet-5, int8: the artifact read back into an untrained model of the same
    architecture gives the identical outputs."""
    from nbhelpers.core.models import build_model

    q = int8_model(_sparse_caffe_lenet5())
    arrays = pack_int8_sparse(q)
    # keyed by the layers' names in the model: Caffe's LeNet-5 is a Sequential
    assert compression.layer_names(arrays) == ["0", "2", "5", "7"]
    assert [str(arrays[f"{n}.kind"]) for n in ("0", "5")] == ["conv", "linear"]
    nnz = sum(len(arrays[k]) for k in arrays if k.endswith(".values"))
    assert nnz <= 0.11 * (500 + 25000 + 400000 + 5000)  # about 10% of the weights, not all
    save_artifact(arrays, tmp_path / "a", entropy_coding=entropy)
    back = unpack_int8(load_artifact(tmp_path / "a"), build_model("lenet5_caffe"))
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(q(x), back(x))
    with pytest.raises(ValueError, match="holds convolutions"):
        unpack_float_mlp(arrays)
    with pytest.raises(ValueError, match=r"holds layers \['0', '2', '5', '7'\]; .* are \['1'\]"):
        unpack_int8(arrays, nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    wrong = build_model("lenet5_caffe", fc=[400])
    with pytest.raises(ValueError, match=r"'5': artifact linear \(500, 800\), model linear \(400"):
        unpack_int8(arrays, wrong)
    with pytest.raises(ValueError, match="int8_model first"):
        pack_int8_sparse(_dynamic(_sparse_caffe_lenet5()))


def test_int8_model_of_an_mlp_is_dynamic_int8(sparse_int8):
    m, q = sparse_int8
    x = torch.randn(3, 64)
    assert torch.equal(int8_model(m)(x), q(x))


def test_rejects_float_model():
    with pytest.raises(ValueError, match="dynamic-int8"):
        pack_int8_sparse(MLP(4, [2]))


def test_huffman_and_entropy_on_known_counts():
    s = np.array(
        [0] * 4 + [1] * 2 + [2] + [3]
    )  # probabilities 1/2, 1/4, 1/8, 1/8: code lengths 1, 2, 3, 3
    assert huffman_bits(s) == 4 * 1 + 2 * 2 + 3 + 3 == 14
    assert entropy_bits(s) == pytest.approx(14.0)
    assert huffman_bits(np.array([7, 7, 7])) == 0
    u = np.arange(8)
    assert huffman_bits(u) == 24 and entropy_bits(u) == pytest.approx(8 * math.log2(8))


# ---------------------------------------------------------------- the pipeline's tables and facts


def stage_table() -> pd.DataFrame:
    """A ``measure.compare``-shaped table of three stages, the first the baseline."""
    df = pd.DataFrame(
        {
            "accuracy": [0.944, 0.95, 0.94],
            "accuracy_low": [0.94, 0.945, 0.935],
            "accuracy_high": [0.948, 0.955, 0.945],
            "params": [1000, 200, 200],
            "nonzero": [1000, 200, 20],
            "bytes": [4000, 800, 100],
            "latency_ms_b1": [0.1, 0.05, 0.05],
            "latency_ms_b256": [2.0, 0.5, 0.4],
            "accuracy_delta_points": [0.0, 0.6, -0.4],
            "delta_low_points": [np.nan, 0.1, -0.9],
            "delta_high_points": [np.nan, 1.1, 0.1],
            "p_mcnemar": [np.nan, 0.02, 0.2],
            "verdict": ["baseline", "better", "within noise"],
            "macs": [1000, 200, 200],
        },
        index=pd.Index(["baseline fp32", "1 small", "2 + int8"], name="model"),
    )
    df["size_ratio"] = 4000 / df["bytes"]
    for bs in (1, 256):
        df[f"speedup_b{bs}"] = df[f"latency_ms_b{bs}"].iloc[0] / df[f"latency_ms_b{bs}"]
    return df


def test_coding_table(sparse_int8):
    _, q = sparse_int8
    arrays = pack_int8_sparse(q)
    values = nonzero_values(arrays)
    assert len(values) == sum(len(arrays[k]) for k in arrays if k.endswith(".values"))
    t = coding_table(arrays, 900, 500, True)
    bitmap = 64 * 16 + 16 * 8 + 8 * 10  # one bit per weight of every layer
    assert t["non-zero int8 weights"] == len(values)
    assert t["distinct int8 values"] == len(np.unique(values))
    assert t["plain artifact (bytes)"] == 900 and t["LZMA-coded artifact (bytes)"] == 500
    huffman = (huffman_bits(values) + bitmap) / 8
    assert t["Huffman-coded values + bitmap, estimate (bytes)"] == huffman
    assert t["Shannon bound of values + bitmap (bytes)"] == (entropy_bits(values) + bitmap) / 8
    assert t["artifact gives back the identical int8 model"] is True
    assert coding_table(arrays, 900, None, False)["LZMA-coded artifact (bytes)"] is None


def test_entropy_stage_and_steps():
    table = stage_table()
    out = with_entropy_stage(table, 50, "3 + entropy coding")
    assert list(out.index)[-1] == "3 + entropy coding" and len(table) == 3  # the input is untouched
    last = out.loc["3 + entropy coding"]
    assert last["bytes"] == 50 and last["size_ratio"] == 80.0
    assert last["accuracy"] == 0.94 and last["latency_ms_b256"] == 0.4 and last["macs"] == 200
    steps = stage_steps(out, [1, 256])
    assert np.isnan(steps["smaller_than_previous"].iloc[0])
    assert list(steps["smaller_than_previous"].iloc[1:]) == [5.0, 8.0, 2.0]
    assert list(steps["faster_than_previous_b256"].iloc[1:]) == [4.0, 1.25, 1.0]
    assert steps["accuracy_vs_previous_points"].iloc[1:].round(6).tolist() == [0.6, -1.0, 0.0]


def write_report(path, records: dict) -> None:
    """An executed notebook whose one cell recorded ``records`` (as ``nbhelpers.core.record``
    does)."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("record(...)")
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data", data={MIME_TYPE: {"name": k, "value": v}, "text/plain": f"{k} = ..."}
        )
        for k, v in records.items()
    ]
    nb.cells.append(cell)
    nbformat.write(nb, str(path))


def comparison_records(models: dict[str, tuple[float, int]], baseline: str) -> dict:
    """Records of a technique notebook: comparison rows (model, accuracy, bytes) and baseline."""
    rows = [
        {"model": m, "accuracy": a, "bytes": b, "size_ratio": models[baseline][1] / b}
        for m, (a, b) in models.items()
    ]
    return {"comparison": rows, "comparison_baseline": baseline}


@pytest.fixture()
def reports(tmp_path):
    """Two executed technique notebooks, one without a comparison, and one outside 04-07."""
    write_report(
        tmp_path / "04_weight_pruning.ipynb",
        comparison_records({"mlp fp32": (0.944, 4000), "pruned": (0.946, 250)}, "mlp fp32"),
    )
    write_report(
        tmp_path / "06_quantization.ipynb",
        comparison_records(
            {"fp32": (0.944, 4000), "int8": (0.943, 1000), "int4": (0.90, 600)}, "fp32"
        ),
    )
    write_report(tmp_path / "05_neuron_pruning.ipynb", {"comparison": [], "other": 1})
    write_report(
        tmp_path / "00_baseline.ipynb",
        comparison_records({"mlp": (0.944, 4000), "lenet5": (0.97, 1000)}, "mlp"),
    )
    return tmp_path


def test_executed_records_reads_the_reports_with_a_comparison(reports, tmp_path):
    recs = executed_records(reports)
    assert list(recs) == ["04_weight_pruning", "06_quantization"]
    assert recs["06_quantization"]["comparison_baseline"] == "fp32"
    assert len(recs["06_quantization"]["comparison"]) == 3
    assert executed_records(tmp_path / "missing") == {}
    assert list(executed_records(reports, "00_*.ipynb")) == ["00_baseline"]


def test_pareto_board_merges_the_reports_with_the_stages(reports):
    board = pareto_board(
        executed_records(reports), stage_table(), "10_pipe", baseline="baseline fp32"
    )
    assert list(board.columns) == leaderboard.COLUMNS
    assert board["notebook"].tolist() == (
        ["04_weight_pruning"] * 2 + ["06_quantization"] * 3 + ["10_pipe"] * 3
    )
    assert board["is_baseline"].tolist() == [True, False, True, False, False, True, False, False]
    assert board.loc[board.notebook == "10_pipe", "model"].tolist() == list(stage_table().index)
    others = single_technique_points(board, "10_pipe")
    assert others["model"].tolist() == ["pruned", "int8", "int4"]
    front = leaderboard.pareto_front(board)
    assert front["model"].tolist() == ["2 + int8", "pruned", "1 small"]  # 100 B, 250 B, 800 B
    alone = pareto_board({}, stage_table(), "10_pipe", baseline="baseline fp32")
    assert len(alone) == 3 and single_technique_points(alone, "10_pipe").empty


def test_pipeline_summary(reports):
    table = stage_steps(stage_table(), [1, 256])
    board = pareto_board(executed_records(reports), table, "10_pipe", baseline="baseline fp32")
    targets = [
        target("size", 40.0, ">=", 40, "x"),
        target("loss", 0.4, "<=", 1.0, "points", interval=(-0.1, 1.2)),
        target("speed", 2.0, ">=", 3, "x"),
    ]
    f = summary(table, targets, board, notebook="10_pipe")
    v = f["value"]
    assert v["final stage"] == "2 + int8"
    assert v["final: times smaller than the baseline"] == 40.0
    assert f.loc["final: times smaller than the baseline", "context"] == "4,000 to 100 bytes"
    assert v["final: accuracy change vs the baseline"] == -0.4
    assert v["final: verdict vs the baseline"] == "within noise"
    assert (
        f.loc["final: verdict vs the baseline", "context"]
        == "the paired 95% interval contains zero"
    )
    assert v["final: speed vs the baseline, batch 1"] == 2.0
    assert v["final: speed vs the baseline, batch 256"] == 5.0
    assert v["multiply-adds per image, baseline / final"] == 5.0
    assert v["1 small: times smaller"] == 5.0 and v["2 + int8: times smaller"] == 8.0
    assert v["1 small: times faster, b256"] == 4.0 and v["2 + int8: times faster, b256"] == 1.25
    assert [v[f"target met: {n}"] for n in ("size", "loss", "speed")] == [True, True, False]
    loss_context = "0.4 [-0.1, 1.2] points (goal in the interval)"
    assert f.loc["target met: loss", "context"] == loss_context
    assert f.loc["target met: speed", "context"] == "2 x"
    assert f["context"].str.len().max() <= CONTEXT_WIDTH  # pandas shows every context in full
    longest = "3 + unstructured pruning: times faster, b256"  # the notebook's longest stage fact
    assert max(f.index.str.len().max(), len(longest)) <= CONTEXT_WIDTH
    assert v["single-technique models on the picture"] == 3
    assert f.loc["single-technique models on the picture", "context"] == "from 2 notebooks"
    assert v["pipeline stages on the Pareto front"] == 2
    assert f.loc["pipeline stages on the Pareto front", "context"] == "of 3 Pareto-optimal points"


def test_pipeline_summary_like_for_like_and_control():
    table = stage_steps(stage_table(), [1, 256])
    like = stage_table().loc["2 + int8"].copy()  # the like-for-like row: 400 B, 0.8 ms at b256
    like[["bytes", "size_ratio", "latency_ms_b256", "speedup_b256"]] = [400, 10.0, 0.8, 2.5]
    like[["accuracy_delta_points", "delta_low_points", "delta_high_points"]] = [-1.0, -1.5, -0.5]
    like["verdict"] = "worse"
    gap = {"difference": 0.6, "low": 0.2, "high": 1.0, "verdict": "better"}
    control = {"seeds": 3, "epochs": 9, "final stage minus it (points)": 0.25, "low": -0.1,
               "high": 0.6, "verdict": "within noise", "seed_std": 0.3,
               "seed_verdict": "within noise"}  # fmt: skip
    f = summary(table, [], pd.DataFrame(columns=leaderboard.COLUMNS), notebook="10_pipe",
                reference=like, reference_gap=gap, control=control)  # fmt: skip
    v = f["value"]
    like_size = "like-for-like: times smaller than the baseline"
    assert v[like_size] == 10.0 and f.loc[like_size, "context"].startswith("400 bytes")
    assert v["like-for-like: accuracy change vs the baseline"] == -1.0
    assert v["like-for-like: verdict vs the baseline"] == "worse"
    assert v["like-for-like: speed vs the baseline, batch 256"] == 2.5
    assert v["stack over like-for-like: size ratio"] == 4.0  # 400 B against the final's 100 B
    assert v["stack minus like-for-like: accuracy change"] == 0.6
    assert f.loc["stack minus like-for-like: accuracy change", "context"] == (
        "paired 95% CI [+0.20, +1.00]"
    )
    assert v["stack vs like-for-like: verdict"] == "better"
    assert v["stack over like-for-like: speed, batch 256"] == 2.0  # 5x against 2.5x
    assert v["from-scratch control: final minus it"] == 0.25
    assert v["from-scratch control: verdict"] == "within noise"
    assert v["from-scratch control: seed_std"] == 0.3
    assert f["context"].str.len().max() <= CONTEXT_WIDTH
    assert f.index.str.len().max() <= CONTEXT_WIDTH
    with pytest.raises(ValueError, match="reference_gap"):
        summary(table, [], pd.DataFrame(columns=leaderboard.COLUMNS), notebook="10_pipe",
                reference=like)  # fmt: skip


def test_deep_compression_recipe_prunes_and_quantizes_the_model_itself():
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 10, (64,))
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = MLP(16, hidden=[12])
    before = [p.detach().clone() for p in model.parameters()]
    q = compression.deep_compression_recipe(model, train, 0.75, 2, 1e-2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # not changed
    weights = [m.weight() for m in int8_linears(q)]  # dynamic int8: the model itself, same shapes
    assert [tuple(w.shape) for w in weights] == [(12, 16), (10, 12)]
    zeros = sum(int((w.int_repr() == 0).sum()) for w in weights)
    assert zeros >= round(0.75 * (16 * 12 + 12 * 10))  # global pruning to 75%, then int8
    again = compression.deep_compression_recipe(model, train, 0.75, 2, 1e-2, seed=0)
    assert all(torch.equal(a.int_repr(), b.weight().int_repr())
               for a, b in zip(weights, int8_linears(again)))  # fmt: skip
    dense = compression.deep_compression_recipe(model, train, 0.0, 2, 1e-2, seed=0)
    assert not (int8_linears(dense)[0].weight().int_repr() == 0).all()


@pytest.mark.parametrize(
    "override, name",
    [
        ({"MODEL": "lenet5"}, "MODEL"),
        ({"MODEL": "lenet5_caffe", "STRUCT_FRACTION": 0.0}, "DISTILL_EPOCHS"),
        ({"MODEL": "lenet5_caffe", "STRUCT_FRACTION": 0.0, "DISTILL_EPOCHS": 0}, "MO_TRIALS"),
        ({"MO_SPACE": {"width": [16, 128], "sparsity": [0.5, 1.0], "bits": [2, 8]}}, "MO_SPACE"),
        ({"MODEL": "lenet5_caffe", "DISTILL_EPOCHS": 0}, "STRUCT_FRACTION"),
    ],
)
def test_pipeline_bad_model_fails_in_validation(override, name, tmp_path):
    from pathlib import Path

    from notebook_runner import assert_fails_in_validation

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "10_compression_pipeline.ipynb"
    assert_fails_in_validation(nb, tmp_path, name, **override)


@pytest.mark.notebook
def test_pipeline_runs_deep_compressions_lenet5(tmp_path):
    """10 with MODEL="lenet5_caffe": no distillation, no structured stage, the convolutions pruned
    and quantized weight-only, the artifact read back into a fresh LeNet-5 gives the same model."""
    from pathlib import Path

    from notebook_runner import run

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "10_compression_pipeline.ipynb"
    r = run(
        nb,
        tmp_path,
        MODEL="lenet5_caffe",
        DISTILL_EPOCHS=0,
        STRUCT_FRACTION=0.0,
        BASELINE_EPOCHS=1,
        PRUNE_EPOCHS=1,
        SPARSITY=0.9,
        MO_TRIALS=0,
        RECORD={},  # the smoke parameters' record names the MLP's layers
    )
    assert r.status == "ok", r.error
    rec = r.records
    assert rec["model"] == "lenet5_caffe" and rec["artifact_round_trip_identical"]
    stages = [row["model"] for row in rec["stages"]]
    assert stages[:2] == ["baseline fp32", "1 no distillation"] and stages[-1] == rec["final_stage"]
    rows = {row["model"]: row for row in rec["stages"]}
    assert rows["1 no distillation"]["accuracy"] == rows["baseline fp32"]["accuracy"]
    assert rows["baseline fp32"]["params"] == 431080
    assert rec["final_sparsity"] == pytest.approx(0.9, abs=0.002)
    # int8 values of all four layers, convolutions included: about a tenth of 430,500 weights
    assert 0.08 * 430500 < rec["final_nonzero_int8_weights"] <= 0.1 * 430500 + 1


def test_mo_space_checks():
    good = {"width": [16, 128], "sparsity": [0.5, 0.98], "bits": [2, 8]}
    assert compression.check_mo_space("MO_SPACE", good) == good
    for knob, bad in [("width", [1, 8]), ("width", [16.5, 32]), ("sparsity", [0.5, 1.0]),
                      ("bits", [2, 9]), ("bits", [4, 4])]:  # fmt: skip
        with pytest.raises(ParameterError, match=re.escape(f"MO_SPACE['{knob}']")):
            compression.check_mo_space("MO_SPACE", {**good, knob: bad})
    with pytest.raises(ParameterError, match="MO_SPACE"):
        compression.check_mo_space("MO_SPACE", {"width": [16, 128]})


def test_weights_at_bits_grid_and_artifact():
    torch.manual_seed(0)
    m = MLP(8, hidden=[4]).eval()
    with torch.no_grad():
        m[1].weight[0, :4] = 0.0
    q, arrays = compression.weights_at_bits(m, 3)  # levels -3..3 times max|w| / 3
    assert compression.layer_names(arrays) == ["1", "3"]  # the MLP's Linear layers by name
    for name, layer in ((n, x) for n, x in q.named_children() if isinstance(x, nn.Linear)):
        s = float(arrays[f"{name}.scale"][0])
        k = layer.weight / s
        assert torch.allclose(k, k.round(), atol=1e-5) and float(k.abs().max()) <= 3 + 1e-5
        assert len(torch.unique(layer.weight)) <= 7
    assert not q[1].weight[0, :4].any()  # zeros stay zero
    nnz = sum(len(v) for k, v in arrays.items() if k.endswith(".values"))
    assert nnz == sum(int((x.weight != 0).sum()) for x in q if isinstance(x, nn.Linear))
    with pytest.raises(ParameterError, match="bits"):
        compression.weights_at_bits(m, 9)


def test_front_table_and_target():
    class T:  # the parts of an Optuna FrozenTrial that front_table reads
        def __init__(self, n, width, acc, size, test):
            self.number, self.params, self.values = n, {"width": width, "sparsity": 0.9,
                                                         "bits": 4}, [acc, size]  # fmt: skip
            self.user_attrs = {"test_accuracy": test}

    study = type("S", (), {"best_trials": [T(3, 64, 0.95, 9000, 0.951), T(1, 16, 0.9, 4000, 0.9)]})
    front = front_table(study, {"accuracy": 0.93, "bytes": 8000})
    assert list(front["trial"]) == [1, 3] and list(front["dominates_final"]) == [False, False]
    gap, note = front_target(front, {"accuracy": 0.93, "bytes": 8000})
    assert gap == pytest.approx(-3.0) and note.startswith("trial 1: width 16")
    gap, note = front_target(front, {"accuracy": 0.93, "bytes": 3000})
    assert math.isnan(gap) and "smallest: 4000 B" in note
    front = front_table(study, {"accuracy": 0.95, "bytes": 9500})
    assert bool(front.loc[1, "dominates_final"])


def test_search_diagnosis_reads_the_budget_or_the_pipeline():
    from nbhelpers.lessons.compression_pipeline import search_diagnosis

    final = {"bytes": 1000}
    near = search_diagnosis({"bytes": 900}, {"difference": -0.1, "low": -0.3, "high": 0.1}, final)
    assert [r[0] for r in near] == [
        "search pipeline at the hand-built knobs: minus the final",
        "search pipeline at the hand-built knobs: bytes over the final's",
        "search shortfall: the budget",
    ]
    assert near[0][1] == -0.1 and near[1][1] == 0.9 and near[2][1] is True
    worse = search_diagnosis({"bytes": 900}, {"difference": -1.0, "low": -1.4, "high": -0.6}, final)
    assert worse[2][1] is False
    bigger = search_diagnosis({"bytes": 1100}, {"difference": 0.0, "low": -0.2, "high": 0.2}, final)
    assert bigger[2][1] is False
    assert search_diagnosis(None, None, final) == []
