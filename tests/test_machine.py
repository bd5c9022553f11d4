"""Unit tests of nbhelpers.core.machine: CPU flags, the int8 precaution, the machine description."""

from __future__ import annotations

import pytest
import torch

from nbhelpers.core import machine

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse4_1 sse4_2 avx f16c avx2 fma
"""
XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: avx2 avx512f avx512bw avx512_vnni amx_tile amx_int8
"""
ARM = """processor\t: 0
Features\t: fp asimd asimddp
"""


def test_flags_and_model_parsed_from_cpuinfo():
    assert machine.cpu_flags(EPYC) == {"fpu", "sse4_1", "sse4_2", "avx", "f16c", "avx2", "fma"}
    assert machine.cpu_model(EPYC) == "AMD EPYC 7B13"
    assert "asimddp" in machine.cpu_flags(ARM)
    assert machine.cpu_flags("") == set()


def test_vnni_detection():
    assert not machine.has_vnni(machine.cpu_flags(EPYC))
    assert machine.has_vnni(machine.cpu_flags(XEON))
    assert machine.has_vnni({"avx2", "avx_vnni"})


@pytest.mark.parametrize(
    "text,arch,want",
    [(EPYC, "x86_64", True), (XEON, "x86_64", False), (ARM, "aarch64", False), ("", "AMD64", True)],
)
def test_int8_precaution(text, arch, want):
    advice = machine.int8_precaution(machine.cpu_flags(text), arch)
    assert advice["reduce_range"] is want and advice["reason"]


def test_pair_sums_fit_int16_only_with_7_bit_weights():
    assert machine.max_pair_sum(8) == 2 * 255 * 128 > machine.INT16_MAX
    assert machine.max_pair_sum(7) == 2 * 255 * 64 <= machine.INT16_MAX


def test_describe_this_machine():
    info = machine.describe("cpu")
    flags = machine.cpu_flags()
    assert info["vnni"] == machine.has_vnni(flags) and info["avx2"] == ("avx2" in flags)
    assert info["int8_reduce_range"] == machine.int8_precaution(flags)["reduce_range"]
    assert (
        info["torch"] == torch.__version__ and info["device"] == "cpu" and info["cuda_device"] == ""
    )
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    table = machine.table(info)
    assert list(table.index) == list(info) and table.loc["torch", "value"] == torch.__version__
