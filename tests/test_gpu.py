"""On a CUDA machine: smoke notebooks with DEVICE="cuda", and test_device.py's checks on the GPU.

Everything here is marked ``gpu`` and skipped where CUDA is absent; the same checks run on a fake
device in ``test_device.py`` on every machine.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from notebook_runner import check_expectations, dump, run
from test_device import CHECKS, Place

from nbhelpers import measure
from nbhelpers.techniques import pruning as P

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]
CUDA_PLACE = Place("cuda", torch.device("cuda"), contextlib.nullcontext, exact=False)

#: The notebooks that train on DEVICE and use the device-sensitive helpers (08: ActivationStats).
SMOKE = [
    "00_baseline",
    "07_knowledge_distillation",
    "08_batch_normalization",
    "09_learning_rate_schedules",
]


@pytest.fixture()
def no_tf32(monkeypatch):
    """Full float32 precision on the GPU, so that results match the CPU's closely."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.mark.notebook
@pytest.mark.parametrize("stem", SMOKE)
def test_notebook_runs_on_cuda(stem: str, tmp_path: Path, monkeypatch):
    """The notebook runs with DEVICE="cuda", training its baselines there (an empty model cache)."""
    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path / "cache"))
    result = run(ROOT / "notebooks" / f"{stem}.ipynb", tmp_path, DEVICE="cuda")
    assert result.status == "ok", result.error
    problems = check_expectations(stem, result.records)
    assert not problems, "\n".join(problems) + "\nrecorded:\n" + dump(result.records)


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
def test_helper_keeps_the_device_on_cuda(check, no_tf32):
    check(CUDA_PLACE)


def test_cuda_timing_and_sparse_kernels():
    """Timing waits for the GPU; the dense and CSR kernels run on the device of the weight."""
    w = torch.randn(64, 32, device="cuda")
    w[w.abs() < 1] = 0
    samples = measure.time_call(lambda: w @ w.t(), warmup=1, repeats=3, device=w.device)
    assert len(samples) == 3 and min(samples) > 0
    df = P.kernel_latency(w, batch_sizes=(1, 8), repeats=2)
    assert list(df["kernel"]) == ["dense", "sparse csr"] * 2 and (df["median_ms"] > 0).all()
    layer = torch.nn.Linear(32, 64).cuda()
    with torch.no_grad():
        layer.weight.copy_(w)
        csr = P.to_csr_model(torch.nn.Sequential(layer))
        x = torch.randn(5, 32, device="cuda")
        assert torch.allclose(csr(x), layer(x), atol=1e-4)
