"""The ONNX Runtime int8 configurations its documentation offers, each built from one float model
and timed side by side with it, so the fastest correct one can be chosen on the CPU at hand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from torch.utils.data import DataLoader

from nbhelpers.core.params import ParameterError, check_bool, check_choice
from nbhelpers.techniques.quantization.onnx import (
    ORT_FORMATS,
    ORT_LEVELS,
    ORT_TYPES,
    OrtModel,
    ort_quantize,
)

#: What one configuration may set, and its value in the reference configuration ("static"):
#: ONNX Runtime's documented defaults for x86-64 (QDQ, per-channel int8 weights, uint8
#: activations, ``quant_pre_process`` first, every graph optimization); ``reduce_range`` None lets
#: this CPU decide (7-bit weights only without VNNI, ``machine.int8_precaution``).
DEFAULT_CONFIG = {
    "mode": "static",
    "fmt": "QDQ",
    "per_channel": True,
    "activation_type": "U8",
    "weight_type": "S8",
    "preprocess": True,
    "level": "all",
    "reduce_range": None,
    "keep_float": (),
}

#: The allowed values of each key of a configuration (``keep_float``: names of torch layers).
CONFIG_CHOICES = {
    "mode": ("static", "dynamic"),
    "fmt": ORT_FORMATS,
    "activation_type": tuple(ORT_TYPES),
    "weight_type": tuple(ORT_TYPES),
    "level": tuple(ORT_LEVELS),
}


def documented_configs(first_layer: str | None = "0") -> dict[str, dict]:
    """The configurations to try: the reference and one documented change at a time.

    Each change comes from ONNX Runtime's quantization guide: the QOperator format instead of QDQ;
    per-tensor weights; no ``quant_pre_process``; U8U8 and S8S8 instead of U8S8 (the guide's
    first choice on x86-64 is U8S8, S8S8 with QDQ when U8S8 loses accuracy); 7-bit weights
    (``reduce_range``, for CPUs without VNNI, where the reference already uses them); only the
    "extended" optimizations (no NHWC layout transformation of int8 convolutions); dynamic
    quantization (``ConvInteger`` for a convolution); and the first layer kept in float.

    Args:
        first_layer: the torch name of the first weighted layer, kept in float by "mixed" (None:
            no mixed configuration).

    Returns:
        Name -> the keys of ``DEFAULT_CONFIG`` that differ from it ({} for the reference).
    """
    configs = {
        "static U8S8 QDQ (reference)": {},
        "QOperator format": {"fmt": "QOperator"},
        "per-tensor weights": {"per_channel": False},
        "no quant_pre_process": {"preprocess": False},
        "U8U8": {"weight_type": "U8"},
        "S8S8": {"activation_type": "S8"},
        "reduce_range (7-bit weights)": {"reduce_range": True},
        "extended optimizations only": {"level": "extended"},
        "dynamic (ConvInteger)": {"mode": "dynamic"},
    }
    if first_layer is not None:
        configs["first layer in float"] = {"keep_float": (first_layer,)}
    return configs


def check_configs(configs: Mapping[str, Mapping]) -> dict[str, dict]:
    """Check every configuration before any is built, and fill in the reference's values.

    Args:
        configs: name -> changes to ``DEFAULT_CONFIG``.

    Returns:
        Name -> the complete configuration.
    """
    if not configs:
        raise ParameterError("configs", configs, "at least one configuration")
    full = {}
    for name, change in configs.items():
        unknown = set(change) - set(DEFAULT_CONFIG)
        if unknown:
            raise ParameterError(
                f"configs[{name!r}]", sorted(unknown), "keys among " + ", ".join(DEFAULT_CONFIG)
            )
        c = {**DEFAULT_CONFIG, **change}
        for key, choices in CONFIG_CHOICES.items():
            check_choice(f"configs[{name!r}].{key}", c[key], choices)
        for key in ("per_channel", "preprocess", "reduce_range"):
            if not (key == "reduce_range" and c[key] is None):
                check_bool(f"configs[{name!r}].{key}", c[key])
        if isinstance(c["keep_float"], str) or not isinstance(c["keep_float"], Sequence):
            raise ParameterError(f"configs[{name!r}].keep_float", c["keep_float"],
                                 "a list of layer names")  # fmt: skip
        full[name] = c
    return full


def build_configs(
    fp32_path: str | Path,
    out_dir: str | Path,
    configs: Mapping[str, Mapping],
    loader: DataLoader,
    batches: int,
    threads: int = 1,
) -> dict[str, OrtModel]:
    """Quantize one float ONNX model in each configuration and open a session for each.

    Args:
        fp32_path: the float .onnx file.
        out_dir: where the int8 files go (one per configuration).
        configs: name -> changes to ``DEFAULT_CONFIG`` (all checked before the first is built).
        loader: calibration data (training images) for static configurations.
        batches: calibration batches.
        threads: intra-op threads of every session.

    Returns:
        Name -> session, in the order of ``configs``; the float model first, as "fp32".
    """
    full = check_configs(configs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sessions = {"fp32": OrtModel(fp32_path, threads)}
    for i, (name, c) in enumerate(full.items()):
        dst = ort_quantize(
            fp32_path,
            out_dir / f"{Path(fp32_path).stem}_config{i}.onnx",
            loader if c["mode"] == "static" else None,
            batches,
            c["fmt"],
            c["per_channel"],
            c["reduce_range"],
            tuple(c["keep_float"]),
            activation_type=c["activation_type"],
            weight_type=c["weight_type"],
            preprocess=c["preprocess"],
        )
        sessions[name] = OrtModel(dst, threads, c["level"])
    return sessions


def fastest_correct(
    table: pd.DataFrame, batch_size: int, max_drop_points: float = 0.5, baseline: str = "fp32"
) -> str | None:
    """The fastest configuration whose accuracy stays within a tolerance of the float model's.

    Args:
        table: a ``measure.compare`` table of the configurations (baseline row included).
        batch_size: the batch size whose speed-up decides.
        max_drop_points: the largest accuracy drop (points, the point estimate) allowed.
        baseline: the float model's row, never chosen.

    Returns:
        The row name, or None when no configuration is correct.
    """
    col = f"speedup_b{batch_size}"
    if col not in table:
        raise ParameterError("batch_size", batch_size, "a batch size timed in the table")
    ok = table.drop(index=baseline)
    ok = ok[ok["accuracy_delta_points"] >= -max_drop_points]
    return None if ok.empty else str(ok[col].idxmax())
