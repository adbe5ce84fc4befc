"""The export options' choices, importable without torch (the command line lists them in --help)."""

ENGINES = ("onnx", "trt")
# torch.onnx's dynamo exporter translates to opset 18 and converts upwards; these are the
# versions exported routed models were checked and run with (tests/test_onnx_export.py).
SUPPORTED_OPSETS = (18, 19, 20, 21, 22, 23)
DEFAULT_OPSET = 18
