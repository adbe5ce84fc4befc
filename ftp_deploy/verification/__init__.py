"""`ftp-deploy verify`: numeric parity through Polygraphy and a latency report."""
