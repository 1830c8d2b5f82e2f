"""MFU peaks: looked up by GPU name (most specific first), none on a CPU."""

from __future__ import annotations

import pytest
import torch

from lmfast.train.callbacks import device_peak_flops


def test_no_peak_and_so_no_mfu_on_a_cpu():
    assert device_peak_flops(torch.device("cpu"), "32-true") is None


@pytest.mark.parametrize(
    ("name", "precision", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.4),
        ("NVIDIA H100 PCIe", "bf16-mixed", 756.0),
        ("NVIDIA A100-SXM4-80GB", "16-mixed", 312.0),
        ("NVIDIA A100-SXM4-80GB", "32-true", 156.0),
        ("NVIDIA A10G", "bf16-mixed", 70.0),
        ("Some Future GPU", "bf16-mixed", None),
    ],
)
def test_peak_by_gpu_name(monkeypatch, name, precision, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)  # no GPU here
    peak = device_peak_flops(torch.device("cuda", 0), precision)
    assert peak == (None if tflops is None else pytest.approx(tflops * 1e12))
