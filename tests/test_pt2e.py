"""PyTorch 2 export int8 (torchao's X86InductorQuantizer): calibrated, converted, close to fp32."""

import pytest
import torch

from nbhelpers.core.models import LeNet5
from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import quantization as Q


def test_pt2e_int8_stays_within_the_int8_step_and_takes_any_batch_size():
    torch.manual_seed(0)
    model = LeNet5((1, 8, 8)).eval()
    x = torch.rand(32, 1, 8, 8)
    q = Q.pt2e_int8(model, x, [(x[:16], None), (x[16:], None)], 2)
    q.eval()  # allowed (exported models refuse it unless told), as measure.correct calls it
    with torch.no_grad():
        ref, out = model(x), q(x)
        one = q(x[:1])  # exported with a dynamic batch axis: any batch size runs
    span = float(ref.max() - ref.min())
    # the input and five layer outputs quantized to 8 bits, each about one step (1/255 of its
    # range) carried by layers of gain near 1: 6 * 2/255 of the logits' range bounds the error
    assert float((out - ref).abs().max()) <= 6 * 2 / 255 * span
    assert float((out - ref).abs().max()) > 0  # it did quantize: float would match to 1e-6
    torch.testing.assert_close(one, out[:1])
    assert any(p.requires_grad for p in model.parameters())  # the float model is left as it was
    # the saved model holds each weight once, in int8: no float tensor of two or more dimensions
    kept = q.state_dict()
    assert not [k for k, v in kept.items() if v.is_floating_point() and v.dim() >= 2]
    n_weights = sum(m.weight.numel() for m in model if hasattr(m, "weight"))
    assert sum(v.numel() for v in kept.values() if v.dtype == torch.int8) == n_weights


def test_pt2e_int8_refuses_zero_calibration_batches():
    with pytest.raises(ParameterError, match="CALIBRATION_BATCHES"):
        Q.pt2e_int8(LeNet5((1, 8, 8)), torch.rand(2, 1, 8, 8), [], 0)
