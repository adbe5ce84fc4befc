"""PyTorch to ONNX export of routed models."""
