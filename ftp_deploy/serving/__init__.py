"""Serving exported routed models from an inference server (Triton Inference Server)."""
