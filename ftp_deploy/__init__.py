"""ftp-deploy: FTP token-routed LLaMA-family models from training to TensorRT."""

__version__ = "0.1.0"
