"""How many trailing predictions the fidelity figures score (FTP_SPEC 1b); see ftp_deploy.fidelity.

Torch-free, so the command line can show it as a default without loading PyTorch.
"""

SCORED_POSITIONS = 64
