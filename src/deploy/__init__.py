"""Deployment: ConvMLP exported to ONNX and TorchScript, checked against the eager model (``tools/export.py``)."""
