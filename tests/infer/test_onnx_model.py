"""The ONNX model's execution providers (scnym.infer.model).

Named test_onnx_model.py: pytest imports test modules by basename, and
tests/train/test_model.py exists.
"""

from __future__ import annotations

import pytest
from scnym.infer.model import resolve_providers


def test_cuda_without_provider_says_how_to_get_it():
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("a CUDA provider is installed")
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        resolve_providers("cuda")
    assert resolve_providers("auto") == ["CPUExecutionProvider"]
