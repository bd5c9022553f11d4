"""ONNX and ONNX Runtime int8: export a float model, quantize it (dynamic, or static with
calibration data; QDQ or QOperator; some layers kept in float), and run it as a callable."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.machine import cpu_flags, int8_precaution
from nbhelpers.core.params import ParameterError, check_bool, check_choice

ORT_FORMATS = ("QDQ", "QOperator")

#: Element types of int8 activations and weights (``QuantType``): "U8" unsigned, "S8" signed.
ORT_TYPES = {"U8": "QUInt8", "S8": "QInt8"}

#: ONNX Runtime's graph optimization levels (``GraphOptimizationLevel``): "basic" folds constants
#: and removes redundant nodes; "extended" adds operator fusions (int8: QDQ pairs into QLinear*
#: kernels); "all" adds layout optimizations (NCHWc for fp32 Conv, NHWC for int8 Conv).
ORT_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


#: ONNX Runtime's calibrators of activation ranges (``CalibrationMethod`` names).
CALIBRATIONS = ("MinMax", "Percentile", "Entropy", "Distribution")


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, opset: int = 17) -> Path:
    """Export a float model to ONNX with a dynamic batch axis (TorchScript exporter, dynamo=False).

    Args:
        model: the float model.
        path: the .onnx file to write.
        example: an input batch (its shape beyond the batch axis is fixed).
        opset: ONNX opset version.

    Returns:
        The path.
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(model).cpu().eval(),
            (example[:1].cpu(),),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


class OrtModel:
    """An ONNX Runtime session as a callable: torch tensor in, NumPy logits out.

    Args:
        path: the .onnx model.
        threads: intra-op threads (inter-op: 1).
        level: graph optimization level, a key of ``ORT_LEVELS`` (default "all").
        optimized_path: where ONNX Runtime saves the graph it optimized (None: not saved); a
            session started from that file skips the optimization at load time.
    """

    def __init__(
        self,
        path: str | Path,
        threads: int = 1,
        level: str = "all",
        optimized_path: str | Path | None = None,
    ):
        import onnxruntime as ort

        check_choice("ORT_LEVEL", level, ORT_LEVELS)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[level])
        if optimized_path is not None:
            opts.optimized_model_filepath = str(optimized_path)
        self.path, self.level = Path(path), level
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """Logits of a batch."""
        return self.session.run(None, {self.input: x.detach().cpu().numpy()})[0]

    @property
    def bytes(self) -> int:
        """Size of the model file on disk."""
        return self.path.stat().st_size


def calibration_reader(loader: DataLoader, batches: int, input_name: str = "x"):
    """An ONNX Runtime ``CalibrationDataReader`` yielding the first ``batches`` batches of a loader.

    Args:
        loader: yields (x, y) batches (training data).
        batches: how many batches.
        input_name: the model's input name.

    Returns:
        The reader.
    """
    from onnxruntime.quantization import CalibrationDataReader

    feeds = [{input_name: x.cpu().numpy()} for (x, _), _ in zip(loader, range(batches))]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    return Reader()


def weighted_nodes(path: str | Path) -> list[str]:
    """Names of an ONNX graph's weighted nodes (Conv, Gemm, MatMul), in graph order.

    Args:
        path: the .onnx file.

    Returns:
        The node names (the first is the layer that sees the input).
    """
    import onnx

    graph = onnx.load(str(path)).graph
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


def nodes_of_layers(
    path: str | Path, layers: Sequence[str], name: str = "MIXED_FLOAT"
) -> list[str]:
    """The weighted ONNX nodes that torch layers were exported to (``/0/Conv`` for layer "0").

    Args:
        path: the .onnx file (exported by ``export_onnx``).
        layers: torch layer names, as in ``model.named_modules()``.
        name: the parameter the names came from, for the error.

    Returns:
        The node names, in the order of ``layers``.

    Raises:
        ParameterError: a layer with no weighted node in the graph (it names the layers there).
    """
    nodes = weighted_nodes(path)
    out = []
    for layer in layers:
        prefix = "/" + str(layer).replace(".", "/") + "/"
        hit = [n for n in nodes if n.startswith(prefix)]
        if not hit:
            known = sorted({n.rsplit("/", 1)[0].lstrip("/").replace("/", ".") for n in nodes})
            raise ParameterError(
                name, list(layers), "weighted layers of the model: " + ", ".join(known)
            )
        out += hit
    return out


def ort_quantize(
    src: str | Path,
    dst: str | Path,
    loader: DataLoader | None = None,
    batches: int = 0,
    fmt: str = "QDQ",
    per_channel: bool = True,
    reduce_range: bool | None = None,
    keep_float: Sequence[str] = (),
    calibration: str = "MinMax",
    activation_type: str = "U8",
    weight_type: str = "S8",
    preprocess: bool = True,
) -> Path:
    """Quantize an ONNX model with ONNX Runtime: dynamic without a loader, static with calibration.

    ``reduce_range`` stores weights in 7 bits ([-64, 64]) and static activations in [0, 127]. ONNX
    Runtime recommends it on x86-64 CPUs without VNNI, whose u8s8 kernels saturate otherwise
    (``nbhelpers.core.machine``); None chooses it from this machine's CPU.

    Args:
        src: the float .onnx file.
        dst: the int8 .onnx file to write.
        loader: calibration data for static quantization; None for dynamic quantization.
        batches: calibration batches (static only).
        fmt: static format, "QDQ" (Quantize/DequantizeLinear pairs) or "QOperator" (QLinear* ops).
        per_channel: per-channel weight scales (static only).
        reduce_range: 7-bit weights; None: ``machine.int8_precaution`` of this CPU decides.
        keep_float: mixed precision: names of the torch layers (``"0"``, ``"features.3"``) whose
            ONNX nodes stay in float (``nodes_to_exclude``); empty quantizes every layer.
        calibration: how static quantization sets each activation's range from the calibration
            data (``CALIBRATIONS``): "MinMax" (the observed extremes), "Percentile" (99.999th
            percentile of |x|), "Entropy" (the range that minimises the KL divergence between the
            float and the quantized histogram, TensorRT's method) or "Distribution".
        activation_type: static activations, "U8" (uint8, ONNX Runtime's default on x86-64) or
            "S8" (``ORT_TYPES``); dynamic quantization always uses uint8 activations.
        weight_type: weights, "S8" (int8) or "U8".
        preprocess: run ``quant_pre_process`` first (shape inference and fp32 graph
            optimization, which ONNX Runtime's documentation recommends before quantizing).

    Returns:
        The path of the int8 model.
    """
    import logging

    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_choice("ORT_FORMAT", fmt, ORT_FORMATS)
    check_choice("CALIBRATIONS", calibration, CALIBRATIONS)
    if reduce_range is None:
        reduce_range = bool(int8_precaution(cpu_flags())["reduce_range"])
    check_bool("REDUCE_RANGE", reduce_range)
    check_choice("ACTIVATION_TYPE", activation_type, ORT_TYPES)
    check_choice("WEIGHT_TYPE", weight_type, ORT_TYPES)
    check_bool("PREPROCESS", preprocess)
    if loader is not None and batches < 1:
        raise ParameterError("CALIBRATION_BATCHES", batches, "an integer >= 1")
    src, dst = Path(src), Path(dst)
    pre = dst.with_suffix(".pre.onnx")
    if preprocess:
        quant_pre_process(str(src), str(pre))
    else:
        pre.write_bytes(src.read_bytes())
    exclude = nodes_of_layers(pre, keep_float)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT logs advice through the root logger
    try:
        if loader is None:
            quantize_dynamic(
                str(pre),
                str(dst),
                weight_type=getattr(QuantType, ORT_TYPES[weight_type]),
                reduce_range=reduce_range,
                nodes_to_exclude=exclude,
            )
        else:
            reader = calibration_reader(loader, batches)
            quantize_static(
                str(pre),
                str(dst),
                reader,
                quant_format=QuantFormat[fmt],
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=getattr(QuantType, ORT_TYPES[activation_type]),
                weight_type=getattr(QuantType, ORT_TYPES[weight_type]),
                nodes_to_exclude=exclude,
                calibrate_method=CalibrationMethod[calibration],
            )
    finally:
        logging.getLogger().setLevel(level)
        pre.unlink(missing_ok=True)
    return dst
