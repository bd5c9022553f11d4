"""Notebook 16 (transformer speed): nbhelpers.techniques.compilation (compile and first call, a
failure kept as its reason, interleaved timing, speed-ups with intervals, float32 tolerances),
nbhelpers.lessons.transformer_speed, the notebook's bad input, the whole notebook when
torch.compile fails, and one real compile of a tiny model."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from notebook_runner import assert_fails_in_validation, small_params, validation_error

from nbhelpers.core.params import ParameterError, UnknownParameterError
from nbhelpers.core.transformer import CharTransformer, set_attention
from nbhelpers.lessons import transformer_speed as ts
from nbhelpers.techniques import compilation

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks" / "16_transformer_speed.ipynb"
U = 2.0**-24


# --- float32 tolerances ---------------------------------------------------------------------


def test_gamma_is_highams_bound():
    assert compilation.gamma(0) == 0.0
    assert compilation.gamma(1) == U / (1 - U)
    assert compilation.gamma(512) == 512 * U / (1 - 512 * U)
    assert compilation.gamma(2**24) == math.inf
    with pytest.raises(ParameterError, match="n"):
        compilation.gamma(-1)


def test_rounding_tolerance_is_two_layers_gamma_scale():
    assert compilation.rounding_tolerance(512, 38, -1.5) == 2 * 38 * compilation.gamma(512) * 1.5
    assert ts.reductions(4) == 38
    tol = ts.tolerances(128, 4, 128, 32, 84, {"logits": 2.0, "loss": 4.0, "grads": 0.5})
    g512, g4096 = compilation.gamma(512), compilation.gamma(4096)
    assert tol == {"logits": 2 * 38 * g512 * 2.0, "loss": 2 * 39 * g4096 * 4.0,
                   "grads": 2 * 76 * g4096 * 0.5}  # fmt: skip


def test_attention_tolerance_formula():
    q = torch.tensor([[[1.0, -2.0], [0.5, 0.0]]])  # (1, t=2, d=2)
    k = torch.tensor([[[3.0, 1.0], [-1.0, 4.0]]])
    v = torch.tensor([[[2.0, -7.0], [1.0, 0.0]]])
    dots = max(
        abs(a) * abs(c) + abs(b) * abs(e) for a, b in q[0].tolist() for c, e in k[0].tolist()
    )
    eps = compilation.gamma(3) * dots / math.sqrt(2)
    want = 2 * 7.0 * (3 * eps + 2 * compilation.gamma(2 * 2 + 4))
    assert compilation.attention_tolerance(q, k, v) == pytest.approx(want, rel=1e-12)


def causal(q, k, v, mask=True):
    t = q.shape[-2]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask:
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_attention_tolerance_bounds_sdpa_and_catches_a_missing_mask(scale: float):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 32, generator=g) * s for s in (scale, scale, 1.0))
    tol = compilation.attention_tolerance(q, k, v)
    fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (causal(q, k, v) - fused).abs().max().item() <= tol
    assert (causal(q, k, v, mask=False) - fused).abs().max().item() > 100 * tol


# --- compile and first call -----------------------------------------------------------------


def test_compile_modes_are_checked():
    assert compilation.check_compile_mode("COMPILE_MODE", "default") == "default"
    with pytest.raises(ParameterError, match="COMPILE_MODE.*'default', 'reduce-overhead'"):
        compilation.check_compile_mode("COMPILE_MODE", "fast")
    with pytest.raises(ParameterError, match="mode"):
        compilation.try_compile(lambda x: x, "fast")


def test_a_failing_compile_is_returned_as_its_reason(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    fn, why = compilation.try_compile(lambda x: x)
    assert fn is None and why == "RuntimeError: Dynamo is not supported on this Python"
    out, row = ts.stage("forward, batch 1", fn, why, torch.ones(1))
    assert out is None and math.isnan(row["seconds"]) and row["status"] == why
    assert ts.maybe_compile(lambda x: x, False, "default") == (None, ts.SKIPPED)


def test_first_call_times_the_call_and_keeps_an_error():
    out, seconds, error = compilation.first_call(lambda a, b: a + b, 2, 3)
    assert (out, error) == (5, "") and 0 <= seconds < 1
    assert compilation.first_call(None, 1)[1:] == (pytest.approx(math.nan, nan_ok=True),
                                                   "not compiled")  # fmt: skip

    def fails(_):
        raise ValueError("no C++ compiler found")

    out, seconds, error = compilation.first_call(fails, 1)
    assert out is None and math.isnan(seconds) and error == "ValueError: no C++ compiler found"
    _, row = ts.stage("training: forward + backward", fails, "", 1)
    assert row["status"] == "failed: ValueError: no C++ compiler found"
    grad_on = compilation.first_call(torch.is_grad_enabled, grad=False)[0]
    assert grad_on is False


def test_fresh_cache_empties_its_folder_and_restores(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "old.so").write_text("stale")
    previous = compilation.fresh_cache(folder)
    assert previous == "/somewhere/else" and list(folder.iterdir()) == []
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder.resolve())
    compilation.restore_cache(previous)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    compilation.restore_cache(compilation.fresh_cache(folder))
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


# --- loss, gradients and a training step ----------------------------------------------------


def tiny(seed: int = 0) -> CharTransformer:
    torch.manual_seed(seed)
    return CharTransformer(11, context=8, width=8, depth=1, heads=2)


def test_loss_and_grads_and_train_step_are_the_plain_computation():
    m = tiny()
    x, y = torch.randint(0, 11, (3, 8)), torch.randint(0, 11, (3, 8))
    loss, grads = compilation.loss_and_grads(compilation.lm_loss(m), m, x, y)
    ref = tiny()
    want = F.cross_entropy(ref(x).reshape(-1, 11), y.reshape(-1))
    want.backward()
    assert loss.item() == want.item()
    assert torch.equal(grads, torch.cat([p.grad.flatten() for p in ref.parameters()]))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    step = compilation.train_step(compilation.lm_loss(m), opt, x, y)
    before = [p.detach().clone() for p in m.parameters()]
    assert step().item() == want.item()
    after = [b - 0.1 * g.grad for b, g in zip(before, ref.parameters())]  # one SGD step
    assert all(torch.allclose(p, a, rtol=0, atol=1e-8) for p, a in zip(m.parameters(), after))
    assert not all(torch.equal(p, b) for p, b in zip(m.parameters(), before))


# --- timing and speed-ups -------------------------------------------------------------------


def test_interleaved_times_alternates_the_calls():
    order: list[str] = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    t = compilation.interleaved_times(calls, rounds=2, repeats=3, warmup=2)
    assert list(t.columns) == ["call", "round", "seconds"] and len(t) == 12
    assert t.groupby(["call", "round"]).size().tolist() == [3, 3, 3, 3]
    assert (t.seconds > 0).all()
    turns = [c for i, c in enumerate(order) if i == 0 or order[i - 1] != c]
    assert turns == ["a", "b", "a", "b"]  # each call takes its turn in each round
    grads = compilation.interleaved_times({"g": torch.is_grad_enabled}, 1, 1, grad=False)
    assert len(grads) == 1
    with pytest.raises(ParameterError, match="rounds"):
        compilation.interleaved_times(calls, rounds=0)


def test_ratio_interval_is_the_median_ratio_with_a_bootstrap_interval():
    ref, fast = [4.0, 4.0, 5.0, 6.0, 4.5], [2.0, 2.5, 2.0, 3.0, 2.0]
    ratio, low, high = compilation.ratio_interval(ref, fast, seed=1)
    assert ratio == 4.5 / 2.0 and low <= ratio <= high and low >= 4.0 / 3.0 and high <= 3.0
    assert compilation.ratio_interval(ref, fast, seed=1) == (ratio, low, high)
    assert compilation.ratio_interval([2.0] * 4, [1.0] * 3) == (2.0, 2.0, 2.0)
    with pytest.raises(ParameterError):
        compilation.ratio_interval([], [1.0])


def fake_times(medians: dict[str, float]) -> pd.DataFrame:
    rows = [{"call": c, "round": 0, "seconds": m * f} for c, m in medians.items()
            for f in (0.9, 1.0, 1.1)]  # fmt: skip
    return pd.DataFrame(rows)


def test_speed_table_against_a_reference():
    t = compilation.speed_table(fake_times({"ref": 0.02, "fast": 0.01}), "ref")
    assert list(t.index) == ["ref", "fast"]
    assert t.loc["ref", "speedup"] == 1.0 and t.loc["fast", "speedup"] == pytest.approx(2.0)
    assert t.loc["fast", "median_ms"] == pytest.approx(10.0) and t.loc["fast", "samples"] == 3
    assert t.loc["fast", "p25_ms"] == pytest.approx(9.5)
    with pytest.raises(ParameterError, match="reference"):
        compilation.speed_table(fake_times({"a": 1.0}), "b")


def test_repay_steps():
    assert ts.repay_steps(30.0, 500.0, 400.0) == 300.0
    assert ts.repay_steps(30.0, 500.0, 401.0) == 304.0  # rounded up
    assert ts.repay_steps(30.0, 400.0, 500.0) == math.inf
    assert math.isnan(ts.repay_steps(math.nan, 400.0, 300.0))


# --- the lesson's tables, target and facts --------------------------------------------------


def test_batch_sizes_are_checked():
    assert ts.check_batch_sizes("BATCH_SIZES", [32, 1, 32]) == [1, 32]
    for bad in ([], [0], [-1], [1.5], [True], "1", [1, 2, 3, 4, 5]):
        with pytest.raises(ParameterError, match="BATCH_SIZES"):
            ts.check_batch_sizes("BATCH_SIZES", bad)


def test_check_row():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5])
    assert ts.check_row("x", a, b, 0.5) == {"check": "x", "max_abs_diff": 0.5, "tolerance": 0.5,
                                            "equal": True}  # fmt: skip
    assert ts.check_row("x", a, b, 0.4)["equal"] is False
    row = ts.check_row("x", None, b, 0.4)
    assert math.isnan(row["max_abs_diff"]) and row["equal"] is None


def stages_table(seconds: float, status: str) -> pd.DataFrame:
    names = [ts.START_STAGE, ts.workload(1), ts.TRAIN_STAGE]
    return pd.DataFrame({"stage": names, "seconds": [seconds] * 3, "status": [status] * 3})


def speeds_table(compiled: bool) -> pd.DataFrame:
    calls = {ts.EAGER: 0.02, ts.WRITTEN: 0.03, **({ts.COMPILED: 0.01} if compiled else {})}
    return ts.speed_tables({ts.workload(1): fake_times(calls), ts.TRAIN: fake_times(calls)})


def profile(other: float) -> pd.DataFrame:
    ms = pd.Series({"matrix products": 60.0, "attention kernels": 20.0, compilation.OTHER: other})
    return pd.DataFrame({"ms": ms, "share": ms / ms.sum()}).rename_axis("group")


def test_op_time_shares_groups_the_profiled_operators():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    q = torch.randn(1, 2, 16, 8)
    t = compilation.op_time_shares(
        lambda: (F.scaled_dot_product_attention(q, q, q, is_causal=True), (a @ b).relu())
    )
    assert list(t.index) == ["matrix products", "attention kernels", compilation.OTHER]
    assert (t.ms > 0).all() and t.share.sum() == pytest.approx(1.0)
    only = compilation.op_time_shares(lambda: a + b, {"adds": ("aten::add",)})
    assert list(only.index) == ["adds", compilation.OTHER] and only.ms["adds"] > 0


def test_breakdown_and_amdahl_bound():
    eager = profile(20.0)
    assert ts.amdahl_bound(eager) == 100.0 / 80.0
    assert ts.amdahl_bound(profile(0.0)) == 1.0
    t = ts.breakdown({ts.EAGER: eager, ts.COMPILED: profile(10.0)})
    assert list(t.columns) == [f"{ts.EAGER} ms", f"{ts.EAGER} share", f"{ts.COMPILED} ms",
                               f"{ts.COMPILED} share"]  # fmt: skip
    assert t.loc[compilation.OTHER, f"{ts.COMPILED} ms"] == 10.0


def test_target_and_facts_when_compiled():
    speeds, stages = speeds_table(True), stages_table(12.0, "compiled")
    (t,) = ts.targets(speeds, stages)
    assert t["measured"] == pytest.approx(2.0) and t["met"] and t["threshold"] == 1.3
    assert t["note"] == "first call 12.0 s (compile of forward + backward)"
    assert list(ts.targets_view([t]).columns) == ["target", "measured", "goal", "met", "note"]
    checks = pd.DataFrame([ts.check_row("x", torch.zeros(1), torch.zeros(1), 1.0)])
    core = {"max_abs_diff": 1e-8, "tolerance": 1e-6}
    times = ts.breakdown({ts.EAGER: profile(20.0), ts.COMPILED: profile(10.0)})
    facts = ts.summary("FLASH_ATTENTION", core, checks, speeds, stages, [1], [t], times)
    v = facts.value
    assert v["eager: training step share in matrix products and attention"] == pytest.approx(0.8)
    assert v["compile: speed-up bound if only the other operators shrink"] == 1.25
    assert v["compiled: other operators' time over eager's"] == 0.5
    assert v["compile: status"] == "compiled" and v["targets met"] == 1
    assert v["SDPA: speed-up over written out, batch 1"] == pytest.approx(1.5)
    assert v["compiled: training step speed-up"] == pytest.approx(2.0)
    assert v["compiled: training steps to repay the compile"] == 1200.0  # 12 s / 10 ms
    assert v["attention: by hand vs SDPA, difference over tolerance"] == pytest.approx(0.01)
    fig = ts.speed_figure(speeds, stages)
    assert len(fig.axes) == 2


def test_target_and_facts_when_compile_failed():
    """A failed compile leaves the target unavailable with its reason, and every fact row."""
    speeds, stages = speeds_table(False), stages_table(math.nan, "failed: RuntimeError: boom")
    (t,) = ts.targets(speeds, stages)
    assert math.isnan(t["measured"]) and not t["met"]
    assert t["note"] == "unavailable: failed: RuntimeError: boom"
    checks = pd.DataFrame([ts.check_row("x", None, torch.zeros(1), 1.0)])
    core = {"max_abs_diff": 0.0, "tolerance": 1e-6}
    eager_only = ts.breakdown({ts.EAGER: profile(20.0)})
    facts = ts.summary("unknown", core, checks, speeds, stages, [1], [t], eager_only)
    both = ts.breakdown({ts.EAGER: profile(20.0), ts.COMPILED: profile(10.0)})
    ok = ts.summary("unknown", core, checks, speeds_table(True), stages_table(1.0, "compiled"),
                    [1], [t], both)  # fmt: skip
    assert math.isnan(facts.value["compiled: other operators' time over eager's"])
    assert list(facts.index) == list(ok.index)  # the Discussion's rows exist either way
    assert facts.value["compile: status"] == "failed: RuntimeError: boom"
    assert math.isnan(facts.value["compiled: training step speed-up"])
    assert facts.value["targets met"] == 0
    assert len(ts.speed_figure(speeds, stages).axes) == 2


# --- the notebook ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,name,allowed",
    [
        ({"COMPILE_MODE": "fastest"}, "COMPILE_MODE", "'max-autotune-no-cudagraphs'"),
        ({"BATCH_SIZES": [0, 32]}, "BATCH_SIZES", "an integer >= 1"),
        ({"BATCH_SIZES": [1.5]}, "BATCH_SIZES", "an integer"),
        ({"BATCH_SIZES": []}, "BATCH_SIZES", "a list of at least 1"),
        ({"BATCH_SIZES": [1, 2, 4, 8, 16]}, "BATCH_SIZES", "at most 4"),
        ({"WINDOW": 256}, "WINDOW", "from 1 to the model's CONTEXT = 128"),
        ({"WINDOW": 0}, "WINDOW", "CONTEXT"),
        ({"TRAIN_BATCH": 0}, "TRAIN_BATCH", ">= 1"),
        ({"COMPILE": "yes"}, "COMPILE", "True or False"),
        ({"HEADS": 3}, "HEADS", "divisor of WIDTH"),
        ({"THREADS": 0}, "THREADS", ">= 1"),
        ({"DEVICE": "tpu"}, "DEVICE", "'cpu'"),
        ({"TEXT_PATH": "/no/such/file.txt"}, "TEXT_PATH", ""),
    ],
)
def test_bad_input_stops_in_validation(override: dict, name: str, allowed: str, tmp_path: Path):
    err = validation_error(NB, tmp_path, **override)
    assert isinstance(err, ParameterError) and name in str(err), repr(err)
    assert allowed in str(err), str(err)


def test_unknown_parameter_stops_in_validation(tmp_path: Path):
    err = validation_error(NB, tmp_path, COMPILE_MODES=["default"])
    assert isinstance(err, UnknownParameterError), repr(err)
    assert "did you mean COMPILE_MODE?" in str(err)
    assert_fails_in_validation(NB, tmp_path, "DATASET", DATASET="bogus")


def run_in_process(tmp_path: Path, monkeypatch, **overrides: Any) -> dict[str, Any]:
    """Every code cell of the notebook in this process with its small parameters (injected as
    papermill would); returns what it recorded."""
    import nbhelpers.core.record as rec

    recorded: dict[str, Any] = {}
    monkeypatch.setattr(rec, "record", lambda n, v: recorded.setdefault(n, rec.to_jsonable(v)))
    matplotlib.use("Agg")
    params = {**small_params(NB.stem), "OUTPUT_DIR": str(tmp_path / "out"), **overrides}
    cells = [c for c in nbformat.read(str(NB), as_version=4).cells if c.cell_type == "code"]
    code = [c.source for c in cells]
    p = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    injected = "# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    sources = code[: p + 1] + [injected] + code[p + 1 :]
    ns: dict[str, Any] = {"__name__": "__notebook__", "In": [""]}
    threads = torch.get_num_threads()
    try:
        for i, src in enumerate(sources):
            ns["In"].append(src)
            exec(compile(src, f"{NB.name}[{i}]", "exec"), ns)
    finally:
        torch.set_num_threads(threads)
    return recorded


def test_notebook_completes_when_torch_compile_fails(tmp_path: Path, monkeypatch):
    """torch.compile raising (no compiler, unsupported Python) does not stop the notebook: the
    compiled rows carry the reason, the target is unavailable, the eager rows are measured, and
    the thread count and the Inductor cache folder are restored."""

    def broken(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported here")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "before"))
    r = run_in_process(tmp_path, monkeypatch, COMPILE=True)
    reason = "RuntimeError: torch.compile is not supported here"
    assert r["compile_status"] == reason
    assert [s["status"] for s in r["compile_stages"]] == [reason] * 4
    (t,) = r["targets"]
    assert t["measured"] is None and t["met"] is False and t["note"] == f"unavailable: {reason}"
    assert r["equal_outputs"] is True and r["checks_run"] == 1
    assert r["train_step_eager_ms"] > 0 and r["train_step_written_out_ms"] > 0
    assert (
        len(r["train_step_profile_ms"]) == 3
        and f"{ts.COMPILED} ms" not in (r["train_step_profile_ms"][0])
    )
    calls = {(row["workload"], row["call"]) for row in r["latency_speed_ms"]}
    assert all(c != ts.COMPILED for _, c in calls) and len(calls) == 6
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "before")
    assert (tmp_path / "out" / "inductor_cache").is_dir()


def test_a_tiny_model_compiles_and_equals_eager():
    """One real torch.compile (Inductor, the C++ compiler): a tiny model's forward, the
    default on-disk cache (about 10-30 s on 2 cores the first time, less when warm)."""
    torch.manual_seed(0)
    m = CharTransformer(11, context=8, width=8, depth=1, heads=2).eval()
    x = torch.randint(0, 11, (2, 8))
    fn, why = compilation.try_compile(m)
    assert why == ""
    out, seconds, error = compilation.first_call(fn, x, grad=False)
    assert error == "" and seconds > 0
    with torch.no_grad():
        ref = m(x)
        written = set_attention(m, "written_out")(x)
    tol = compilation.rounding_tolerance(32, ts.reductions(1), ref.abs().max().item())
    assert (out - ref).abs().max().item() <= tol
    assert (written - ref).abs().max().item() <= tol
    assert not np.allclose(ref.numpy(), 0)
