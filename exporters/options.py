"""The export options' choices, importable without torch (the command line lists them in --help)."""

ENGINES = ("onnx", "trt")
EXPORT_DTYPES = ("fp32", "fp16", "bf16")
# torch.onnx's dynamo exporter translates to opset 18 and converts upwards; these are the
# versions exported routed models were checked and run with (tests/test_onnx_export.py).
SUPPORTED_OPSETS = (18, 19, 20, 21, 22, 23)
DEFAULT_OPSET = 18
# The graph inputs, both [batch, sequence]; the TensorRT optimization profile names them too.
INPUT_NAMES = ("input_ids", "attention_mask")
