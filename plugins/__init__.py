"""Token-compaction operators: reference semantics, kernels and the TensorRT plugin."""
