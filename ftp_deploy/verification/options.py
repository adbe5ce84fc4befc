"""The verify options' defaults, importable without numpy or torch (the command line shows them in --help)."""

DEFAULT_LATENCY_LENGTHS = (128, 512, 1024, 2048)
MIN_TIMED_RUNS = 10
DEFAULT_DECODE_STEPS = 8
