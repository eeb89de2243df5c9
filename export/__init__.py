"""Export trained scNym models to self-describing ONNX files (issue #4, not built yet)."""
