"""`--provider cuda` accepts the exporter's default (in-place cache) export instead of refusing it.

onnxruntime-gpu cannot be installed here, so the CUDA provider itself is not run: the backend is
built for provider "cuda" over a CPU session, which takes the same host-bound buffer path that
ONNX Runtime's CUDA provider is given (buffers in host memory, copied to the device and back by
ONNX Runtime each step; docs/gpu.md). What is checked: no refusal, a warning that names the cost,
and the same greedy tokens as the CPU backend.
"""

from __future__ import annotations

import logging

import onnxruntime as ort

from lmfast.generation import Generator
from lmfast.generation.onnx_backend import OnnxBackend, session_options
from lmfast.generation.params import GenerationParams


def test_the_default_in_place_export_is_accepted_for_cuda_with_its_cost_named(onnx_dir, prompts, caplog):
    session = ort.InferenceSession(
        str(onnx_dir / "model.onnx"), sess_options=session_options(2), providers=["CPUExecutionProvider"]
    )
    with caplog.at_level(logging.WARNING, logger="lmfast.generation.onnx_backend"):
        backend = OnnxBackend(session, provider="cuda")
    assert backend.inplace and "copies it to the GPU and back" in caplog.text
    cpu = Generator.load(onnx_dir, num_threads=2)
    as_cuda = Generator(backend, cpu.codec, cpu.info)
    params = GenerationParams(max_new_tokens=8, temperature=0.0)
    assert as_cuda(prompts, params) == cpu(prompts, params)
