"""`ftp-deploy train`: schedule search, router training and schedule fine-tune (FTP_SPEC sections 5-6)."""
