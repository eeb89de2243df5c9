"""Torch-free streaming annotation with ONNX models (issue #5, not built yet)."""
