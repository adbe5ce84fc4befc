"""Runtimes for exported models: ONNX Runtime sessions, TensorRT builder and runner."""
