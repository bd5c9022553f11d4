"""What the calibration data and method do to static int8, measured on the same test images.

``calibration_table``: ONNX Runtime's calibrators (MinMax, Percentile, Entropy, ...) against the
fp32 ONNX model. ``calibration_mistakes``: eager torch int8 (and min/max ranges from scratch)
calibrated on enough training batches against no calibration and against one class only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.params import check_int
from nbhelpers.techniques.quantization.affine import activation_ranges, quantize_activations
from nbhelpers.techniques.quantization.onnx import OrtModel, ort_quantize
from nbhelpers.techniques.quantization.torch_int8 import (
    calibrate,
    convert,
    observer_ranges,
    prepare_static,
)


def calibration_table(
    fp32: Mapping[str, Path],
    out_dir: Path,
    calib_loader: DataLoader,
    batches: int,
    test_loader: DataLoader,
    methods: Sequence[str],
    fmt: str = "QDQ",
) -> pd.DataFrame:
    """Static int8 in ONNX Runtime with each calibration method, against the fp32 ONNX model.

    Args:
        fp32: model name -> its fp32 .onnx file.
        out_dir: where the int8 files go.
        calib_loader: calibration batches (training data).
        batches: calibration batches used.
        test_loader: test batches (the same images for every model: paired differences).
        methods: names from ``CALIBRATIONS``.
        fmt: the static format.

    Returns:
        One row per model and method: test accuracy, its change against the fp32 ONNX model in
        points with the paired 95% interval and verdict (``stats.paired_difference``).
    """
    from nbhelpers.measure import correct
    from nbhelpers.measure.stats import paired_difference

    rows = []
    for name, src in fp32.items():
        base = correct(OrtModel(src), test_loader)
        for method in methods:
            dst = Path(out_dir) / f"{Path(src).stem}_int8_{method.lower()}.onnx"
            path = ort_quantize(src, dst, calib_loader, batches, fmt, calibration=method)
            hits = correct(OrtModel(path), test_loader)
            d = paired_difference(base, hits)
            rows.append({"model": name, "calibration": method, "accuracy": float(hits.mean()),
                         "delta_points": d["difference"], "low": d["low"], "high": d["high"],
                         "verdict": d["verdict"]})  # fmt: skip
    return pd.DataFrame(rows)


def class_batch(
    loader: DataLoader, label: int, size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch of the first ``size`` images of a single class in a loader.

    Args:
        loader: yields (x, y) batches.
        label: the class.
        size: how many images (fewer when the loader has fewer of that class).

    Returns:
        A one-batch list [(x, y)], usable wherever a calibration loader is.
    """
    check_int("size", size, minimum=1)
    xs, ys, n = [], [], 0
    for x, y in loader:
        keep = y == label
        xs.append(x[keep])
        ys.append(y[keep])
        n += int(keep.sum())
        if n >= size:
            break
    if n == 0:
        raise ValueError(f"no image of class {label} in the loader")
    return [(torch.cat(xs)[:size], torch.cat(ys)[:size])]


def _paired_row(base: np.ndarray, right: np.ndarray, hits: np.ndarray) -> dict:
    """Accuracy of one model with its paired differences against fp32 and the right way."""
    from nbhelpers.measure.stats import paired_difference

    row: dict = {"accuracy": float(hits.mean())}
    for ref, against in (("fp32", base), ("calibrated", right)):
        d = paired_difference(against, hits)
        row |= {
            f"vs_{ref}_points": d["difference"],
            f"vs_{ref}_low": d["low"],
            f"vs_{ref}_high": d["high"],
            f"vs_{ref}_verdict": d["verdict"],
        }
    return row


def calibration_mistakes(
    model: nn.Sequential,
    loader: DataLoader,
    test_loader: DataLoader,
    batches: int,
    label: int,
    engine: str = "x86",
    scratch_bits: int = 8,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Static int8 calibrated the right way against two common mistakes, on the same test images.

    The right way runs ``batches`` training batches through the observers. The mistakes: no
    calibration at all (observers that saw no data fall back to scale 1 and zero point 0), and
    calibration on one batch, or one image, of a single class ``label``. Each setting is run
    twice: as PyTorch eager int8 (the engine's default observers, which search a clipping range
    in a histogram) and from scratch with plain min/max ranges of every layer's input
    (``activation_ranges``, ``quantize_activations`` at ``scratch_bits``; weights stay float).

    Args:
        model: the float ``nn.Sequential`` (not changed).
        loader: training batches (calibration data).
        test_loader: test batches, the same images for every model.
        batches: calibration batches of the right way.
        label: the single class of the mistaken calibration.
        engine: quantized engine (its default qconfig).
        scratch_bits: activation bits of the from-scratch path.

    Returns:
        (accuracy, ranges). accuracy: one row per (quantizer, setting) with calibration_images,
        accuracy and, against the fp32 model and against the calibrated model of the same
        quantizer, the paired difference in points with its 95% interval and verdict. ranges:
        ``observer_ranges`` of each eager setting, one row per (setting, layer).
    """
    from nbhelpers.measure import correct

    right = f"calibrated: {batches} batches"
    one = class_batch(loader, label, 64)
    settings = {
        right: (loader, batches),
        "no calibration": ([], 0),
        f"one batch of class {label}": (one, 1),
        f"one image of class {label}": ([(one[0][0][:1], one[0][1][:1])], 1),
    }
    base = correct(model, test_loader)
    rows, ranges, hits = [], [], {}
    for setting, (data, n) in settings.items():
        prepared = prepare_static(model, engine)
        images = calibrate(prepared, data, n) if n else 0
        hits[("torch int8", setting)] = correct(convert(prepared), test_loader)
        ranges.append(observer_ranges(prepared).assign(setting=setting))
        rows.append({"quantizer": "torch int8", "setting": setting, "calibration_images": images})
        if n:
            quantizer = f"from scratch, min/max, {scratch_bits}-bit inputs"
            r = activation_ranges(model, data, n)
            hits[(quantizer, setting)] = correct(
                quantize_activations(model, scratch_bits, r), test_loader
            )
            rows.append({"quantizer": quantizer, "setting": setting, "calibration_images": images})
    for row in rows:
        ok = hits[(row["quantizer"], row["setting"])]
        row |= _paired_row(base, hits[(row["quantizer"], right)], ok)
    accuracy = pd.DataFrame(rows).sort_values("quantizer", kind="stable", ignore_index=True)
    return accuracy, pd.concat(ranges, ignore_index=True)[["setting", *ranges[0].columns[:-1]]]
