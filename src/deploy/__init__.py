"""Deployment: ConvMLP exported to ONNX and TorchScript, checked against the eager model (``tools/export.py``), and
quantized to int8 (``tools/quantize.py``) into files that carry their class names and preprocessing."""
