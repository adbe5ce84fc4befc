"""The comparison export validation and `ftp-deploy verify` both run: an exported graph against the
PyTorch reference (Polygraphy's Comparator, one tolerance definition), its feeds, and the decode check."""
