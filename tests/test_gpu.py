"""GPU correctness (`python -m pytest -m gpu`; skipped without CUDA): on the device, the paper-size
model computes what it computes in float32, within the tolerances of tests/cuda_checks.py TOL.
The one-call device run (bash bench/gpu_check.sh) runs the same checks and records them."""
from __future__ import annotations

import pytest
import torch

from tests.cuda_checks import TOL, packed_vs_padded, reader_precision

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("preset", ["paper", "hybrid_standard"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_and_padded_encoders_agree_on_the_device(preset, dtype):
    r = packed_vs_padded("cuda", preset, 16, dtype)
    assert r["same_grad_keys"] and r["carry_dtype_packed"] == "float32"
    for key, limit in TOL["packed_vs_padded_bf16" if dtype == "bfloat16" else "packed_vs_padded_fp32"].items():
        assert r[key] <= limit, (key, r[key], limit)
    if dtype == "bfloat16":  # key-padding masks must not push bf16 attention onto the math fallback
        assert r["attention_packed"]["math_fallback_calls"] + r["attention_padded"]["math_fallback_calls"] == 0


@pytest.mark.parametrize("option", ["map_read", "demo_attention"])
def test_demo_reading_paths_in_bf16_match_float32(option):
    r = reader_precision("cuda", option, 16)
    for key, limit in TOL["reader_bf16_vs_fp32"].items():
        assert r[key] <= limit, (key, r[key], limit)
