"""ONNX Runtime's documented int8 configurations: checked before any work, built, chosen."""

import numpy as np
import pandas as pd
import pytest
import torch

from nbhelpers.core.models import LeNet5
from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import quantization as Q


def test_every_documented_config_is_complete_and_changes_one_thing():
    configs = Q.documented_configs()
    full = Q.check_configs(configs)
    assert full["static U8S8 QDQ (reference)"] == Q.DEFAULT_CONFIG
    for name, change in configs.items():
        differs = {k for k in Q.DEFAULT_CONFIG if full[name][k] != Q.DEFAULT_CONFIG[k]}
        assert differs == set(change), name
        assert len(differs) <= 1
    assert "first layer in float" not in Q.documented_configs(first_layer=None)


@pytest.mark.parametrize(
    "configs, name",
    [
        ({"a": {"fmt": "QLinear"}}, "configs['a'].fmt"),
        ({"a": {"activation_type": "U16"}}, "configs['a'].activation_type"),
        ({"a": {"level": "max"}}, "configs['a'].level"),
        ({"a": {"mode": "qat"}}, "configs['a'].mode"),
        ({"a": {"per_channel": "yes"}}, "configs['a'].per_channel"),
        ({"a": {"keep_float": "0"}}, "configs['a'].keep_float"),
        ({"a": {"engine": "x86"}}, "configs['a']"),
        ({}, "configs"),
    ],
)
def test_a_bad_config_names_the_key_before_any_work(configs, name, tmp_path):
    with pytest.raises(ParameterError) as e:
        Q.build_configs(tmp_path / "missing.onnx", tmp_path / "out", configs, [], 1)
    assert e.value.name == name
    assert not (tmp_path / "out").exists()  # refused before a directory or a file was made


@pytest.mark.parametrize(
    "kwargs, name",
    [({"activation_type": "int8"}, "ACTIVATION_TYPE"), ({"weight_type": "S4"}, "WEIGHT_TYPE"),
     ({"preprocess": 1}, "PREPROCESS")],
)  # fmt: skip
def test_ort_quantize_refuses_unknown_types(kwargs, name, tmp_path):
    with pytest.raises(ParameterError) as e:
        Q.ort_quantize(tmp_path / "missing.onnx", tmp_path / "q.onnx", **kwargs)
    assert e.value.name == name


def test_ort_model_refuses_an_unknown_level(tmp_path):
    with pytest.raises(ParameterError, match="ORT_LEVEL"):
        Q.OrtModel(tmp_path / "missing.onnx", level="max")


def test_each_config_builds_and_stays_within_the_int8_step_of_fp32(tmp_path):
    torch.manual_seed(0)
    model = LeNet5((1, 8, 8)).eval()
    x = torch.rand(32, 1, 8, 8)
    fp32 = Q.export_onnx(model, tmp_path / "m.onnx", x)
    configs = Q.documented_configs()
    sessions = Q.build_configs(fp32, tmp_path / "q", configs, [(x, None)], 1)
    assert list(sessions) == ["fp32", *configs]
    ref = sessions["fp32"](x)
    np.testing.assert_allclose(ref, model(x).detach().numpy(), atol=1e-5)
    span = float(ref.max() - ref.min())
    for name, sess in sessions.items():
        out = sess(x)
        assert out.shape == ref.shape
        # six quantized tensors (the input and five layer outputs) each add about one step, 1/255
        # of its range (1/127 with 7-bit weights), carried to the logits by layers of gain near 1:
        # 6 * 2/255 = 0.047 of the logits' range bounds every configuration on any CPU
        assert np.abs(out - ref).max() <= 6 * 2 / 255 * span, name
    assert sessions["extended optimizations only"].level == "extended"
    files = sorted(p.name for p in (tmp_path / "q").glob("*.onnx"))
    assert len(files) == len(configs)


def test_fastest_correct_skips_inaccurate_rows_and_the_baseline():
    t = pd.DataFrame(
        {"accuracy_delta_points": [0.0, -2.0, -0.4, 0.1], "speedup_b256": [1.0, 3.0, 1.4, 1.2]},
        index=["fp32", "fast but wrong", "ok", "slower"],
    )
    assert Q.fastest_correct(t, 256) == "ok"
    assert Q.fastest_correct(t, 256, max_drop_points=3.0) == "fast but wrong"
    assert Q.fastest_correct(t.loc[["fp32", "fast but wrong"]], 256) is None
    with pytest.raises(ParameterError, match="batch_size"):
        Q.fastest_correct(t, 1)
