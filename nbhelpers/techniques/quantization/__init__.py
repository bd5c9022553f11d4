"""Quantization: uniform affine quantization from scratch, PyTorch int8 (eager, and FX graph mode
for any traceable model), ONNX Runtime int8.

* ``affine``: scale and zero point, quantize, dequantize, fake-quantize (per tensor or per output
  channel, symmetric or asymmetric), a model's weights and calibrated layer inputs fake-quantized,
  MSE and SQNR, and what a bit-width sweep shows (about 6 dB per bit);
* ``kmeans``: Deep Compression's k-means weight sharing against a uniform grid of as many levels;
* ``torch_int8``: PyTorch's eager int8 for the shared Sequential models (fuse, observe or QAT,
  convert; dynamic int8), what the observers saw, and static int8 of any traceable model through
  FX graph mode, saved and reloaded;
* ``onnx``: export to ONNX, ONNX Runtime quantization (dynamic or static, QDQ or QOperator, layers
  kept in float) and a session as a callable;
* ``onnx_lm``: ONNX Runtime dynamic int8 of a language model's ``MatMul`` weights only (the
  embeddings kept in float, as torch.ao does), its per-character losses, its fp32 agreement with
  torch against a tolerance from torch's own float32 rounding, and the bytes of its weights;
* ``ort_configs``: the int8 configurations ONNX Runtime documents (format, per-channel, pre-
  processing, U8S8/U8U8/S8S8, reduce_range, optimization level, dynamic, first layer in float),
  each built from one float model, and the fastest one that stays accurate;
* ``onnx_size``: an ONNX file's bytes by part (weights, bias, scales and zero points, graph and
  container), adding up to the file, and the fp32 / int8 size ratio against a target;
* ``onnx_lean``: an ONNX file rewritten the lean way, with the same outputs bit for bit;
* ``calibration``: ONNX Runtime's calibration methods compared, and eager int8 calibrated the right
  way against no calibration and one class only;
* ``int8_checks``: the rounding bound of an int8 Linear and the saturation check, ``reduce_range``
  side by side, logits agreement, speed and size within one runtime;
* ``pt2e``: PyTorch 2 export int8 (torchao's x86 Inductor quantizer) and ``torch.compile``, of the
  int8 and of the float model;
* ``profiling``: ONNX Runtime's per-operator profile, grouped by what the operators do;
* ``weight_only``: weight-only int8 per channel or per tensor and int4 per group of a model's
  ``Linear`` layers (fake quantization: quality and bytes, not kernel speed), the weights' outlier
  ratios, the bytes of a dynamically quantized model's int8 weights.

Everything public is re-exported here (``from nbhelpers.techniques import quantization;
quantization.quant_params``); notebook 06's targets and facts table are in
``nbhelpers.lessons.quantization``.
"""

from nbhelpers.techniques.quantization.affine import (
    VARIANTS,
    WEIGHT_LAYERS,
    activation_ranges,
    check_bits,
    dequantize,
    fake_quantize,
    mse,
    naive_rescale,
    per_channel_never_worse,
    qrange,
    quant_params,
    quantize,
    quantize_activations,
    quantize_weights,
    sqnr_bits_span,
    sqnr_db,
    sqnr_gain_per_bit,
    sqnr_grows_with_bits,
    weight_error,
)
from nbhelpers.techniques.quantization.calibration import (
    calibration_mistakes,
    calibration_table,
    class_batch,
)
from nbhelpers.techniques.quantization.int8_checks import (
    int8_error_bound,
    output_agreement,
    reduce_range_study,
    same_runtime_speedups,
    saturation_check,
)
from nbhelpers.techniques.quantization.kmeans import (
    kmeans_vs_uniform,
    kmeans_weights,
)
from nbhelpers.techniques.quantization.onnx import (
    CALIBRATIONS,
    ORT_FORMATS,
    ORT_LEVELS,
    ORT_TYPES,
    OrtModel,
    calibration_reader,
    export_onnx,
    nodes_of_layers,
    ort_quantize,
    weighted_nodes,
)
from nbhelpers.techniques.quantization.onnx_lean import lean_onnx
from nbhelpers.techniques.quantization.onnx_lm import (
    AGREEMENT_FACTOR,
    fp32_agreement,
    ort_dynamic_int8,
    session_char_losses,
    weight_bytes,
)
from nbhelpers.techniques.quantization.onnx_size import (
    lean_savings,
    onnx_size_breakdown,
    size_ratio_table,
    tensor_payload,
    tensor_roles,
)
from nbhelpers.techniques.quantization.ort_configs import (
    CONFIG_CHOICES,
    DEFAULT_CONFIG,
    build_configs,
    check_configs,
    documented_configs,
    fastest_correct,
)
from nbhelpers.techniques.quantization.profiling import (
    OP_GROUPS,
    kernel_table,
    op_group,
    ort_profile,
    profile_by_op,
)
from nbhelpers.techniques.quantization.pt2e import compiled, pt2e_int8
from nbhelpers.techniques.quantization.torch_int8 import (
    AO_WARNINGS,
    QuantReady,
    calibrate,
    check_layer_names,
    convert,
    dynamic_int8,
    engines,
    fusion_groups,
    load_static_int8,
    observer_ranges,
    prepare_static,
    quiet_ao,
    set_engine,
    static_int8_fx,
)
from nbhelpers.techniques.quantization.weight_only import (
    check_group_size,
    dynamic_linear_bytes,
    format_name,
    outlier_table,
    quantizable_linears,
    quantize_weight_groups,
    weight_only_model,
)

__all__ = [
    "compiled",
    "pt2e_int8",
    "CONFIG_CHOICES",
    "DEFAULT_CONFIG",
    "build_configs",
    "check_configs",
    "documented_configs",
    "fastest_correct",
    "AO_WARNINGS",
    "CALIBRATIONS",
    "OP_GROUPS",
    "ORT_FORMATS",
    "ORT_LEVELS",
    "ORT_TYPES",
    "VARIANTS",
    "WEIGHT_LAYERS",
    "OrtModel",
    "QuantReady",
    "activation_ranges",
    "calibrate",
    "calibration_mistakes",
    "calibration_reader",
    "calibration_table",
    "check_bits",
    "check_layer_names",
    "class_batch",
    "convert",
    "dequantize",
    "dynamic_int8",
    "engines",
    "export_onnx",
    "fake_quantize",
    "fusion_groups",
    "int8_error_bound",
    "kmeans_vs_uniform",
    "kmeans_weights",
    "lean_onnx",
    "lean_savings",
    "load_static_int8",
    "mse",
    "naive_rescale",
    "nodes_of_layers",
    "observer_ranges",
    "onnx_size_breakdown",
    "op_group",
    "kernel_table",
    "ort_profile",
    "ort_quantize",
    "output_agreement",
    "per_channel_never_worse",
    "prepare_static",
    "profile_by_op",
    "qrange",
    "quant_params",
    "quantize",
    "quantize_activations",
    "quantize_weights",
    "quiet_ao",
    "reduce_range_study",
    "same_runtime_speedups",
    "saturation_check",
    "set_engine",
    "size_ratio_table",
    "sqnr_bits_span",
    "sqnr_db",
    "sqnr_gain_per_bit",
    "sqnr_grows_with_bits",
    "static_int8_fx",
    "tensor_payload",
    "tensor_roles",
    "weight_error",
    "weighted_nodes",
    "check_group_size",
    "dynamic_linear_bytes",
    "format_name",
    "outlier_table",
    "quantizable_linears",
    "quantize_weight_groups",
    "weight_only_model",
    "AGREEMENT_FACTOR",
    "fp32_agreement",
    "ort_dynamic_int8",
    "session_char_losses",
    "weight_bytes",
]
