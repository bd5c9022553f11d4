"""The machine is part of every measurement: CPU model, int8-relevant instruction sets, versions,
device.

int8 speed and even int8 results depend on the CPU. On x86-64, ONNX Runtime's and fbgemm's u8s8
kernels multiply unsigned 8-bit activations by signed 8-bit weights with ``VPMADDUBSW``, which adds
two products into a 16-bit integer with saturation: :math:`2 \\cdot 255 \\cdot 127 = 64770` does not
fit in :math:`2^{15} - 1 = 32767`, so large products are clamped. CPUs with VNNI (``avx512_vnni``
or ``avx_vnni``) accumulate straight into 32 bits (``VPDPBUSD``) and never saturate. Without VNNI,
7-bit weights (``reduce_range``: :math:`2 \\cdot 255 \\cdot 64 = 32640`) keep every pair in range.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd

#: /proc/cpuinfo flags that matter for int8 inference, and what each gives.
INT8_FLAGS = {
    "avx2": "256-bit integer SIMD (u8s8 pairs summed into int16, with saturation)",
    "avx512f": "512-bit SIMD",
    "avx512_vnni": "VNNI: u8s8 dot products accumulated in int32 (VPDPBUSD), no saturation",
    "avx_vnni": "VNNI on 256-bit registers (AVX-VNNI)",
    "amx_int8": "AMX tiles: int8 matrix multiply",
}
#: The largest int16 a u8s8 pair sum may reach before ``VPMADDUBSW`` saturates.
INT16_MAX = 2**15 - 1


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags, read from ``/proc/cpuinfo`` (empty where it does not exist).

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (read from the system when None).

    Returns:
        The set of flags of the first processor, e.g. {"avx2", "avx512_vnni", ...}.
    """
    text = cpuinfo if cpuinfo is not None else _read_cpuinfo()
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU model name (``/proc/cpuinfo``'s "model name", else ``platform.processor()``).

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (read from the system when None).

    Returns:
        e.g. "AMD EPYC 7B13", or "unknown".
    """
    text = cpuinfo if cpuinfo is not None else _read_cpuinfo()
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() == "model name":
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def has_vnni(flags: set[str]) -> bool:
    """Whether the CPU has VNNI 8-bit dot products (AVX512-VNNI or AVX-VNNI)."""
    return bool({"avx512_vnni", "avx_vnni"} & flags)


def int8_precaution(flags: set[str], arch: str | None = None) -> dict[str, object]:
    """Whether int8 weights should be 7-bit (``reduce_range``) on this CPU, and why.

    ONNX Runtime documents ``reduce_range`` for x86-64 CPUs without VNNI, where its u8s8 kernels
    can saturate; PyTorch's fbgemm and x86 backends reduce the range of activations for the same
    reason. On VNNI CPUs and on other architectures the full 8 bits are safe.

    Args:
        flags: the CPU flags (``cpu_flags()``).
        arch: ``platform.machine()`` (read from the system when None).

    Returns:
        {"reduce_range": bool, "reason": str}.
    """
    arch = (arch or platform.machine()).lower()
    if arch not in ("x86_64", "amd64"):
        return {"reduce_range": False, "reason": f"{arch}: u8s8 kernels of x86 do not apply"}
    if has_vnni(flags):
        return {
            "reduce_range": False,
            "reason": "VNNI accumulates u8s8 products in int32: full 8 bits",
        }
    return {
        "reduce_range": True,
        "reason": "x86-64 without VNNI: u8s8 pairs saturate int16, so weights use 7 bits",
    }


def max_pair_sum(weight_bits: int = 8, activation_max: int = 255) -> int:
    """The largest |sum| of two u8 x s8 products a ``VPMADDUBSW`` lane can produce.

    Args:
        weight_bits: 8 for weights in [-128, 127], 7 for ``reduce_range`` weights in [-64, 64].
        activation_max: the largest unsigned activation code (255 for uint8).

    Returns:
        2 * activation_max * max |weight code|; above ``INT16_MAX`` it saturates.
    """
    return 2 * activation_max * 2 ** (weight_bits - 1)


def describe(device: str = "cpu") -> dict[str, object]:
    """The machine a run measured on: CPU, its int8 extensions, versions and the torch device.

    Args:
        device: the device the notebook computes on ("cpu" or "cuda").

    Returns:
        JSON-able facts: cpu, arch, cores, avx2, avx512, vnni, amx, torch_cpu_capability,
        int8_reduce_range (and its reason), quantized_engine, python, torch, onnxruntime, device,
        cuda_device (the GPU name, or "").
    """
    import torch

    flags = cpu_flags()
    advice = int8_precaution(flags)
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "vnni": has_vnni(flags),
        "amx": "amx_int8" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "int8_reduce_range": advice["reduce_range"],
        "int8_reason": advice["reason"],
        "quantized_engine": torch.backends.quantized.engine,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if cuda else "",
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def table(info: dict[str, object]) -> pd.DataFrame:
    """A ``describe()`` result as a one-column table for a notebook."""
    return pd.DataFrame(
        {"value": [str(v) for v in info.values()]}, index=pd.Index(list(info), name="fact")
    )
