"""`ftp-deploy generate`: text from a run folder (PyTorch) or an exported artifact folder."""
