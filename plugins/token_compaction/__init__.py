"""The `ftp::TokenCompact` / `ftp::TokenScatter` operator pair (contract in plugins/README.md)."""

from ftp_deploy.plugins.token_compaction.contract import (
    DOMAIN,
    OP_VERSION,
    SPARSITY_DEN,
    kept_count,
)
from ftp_deploy.plugins.token_compaction.reference import token_compact, token_scatter

__all__ = ["DOMAIN", "OP_VERSION", "SPARSITY_DEN", "kept_count", "token_compact", "token_scatter"]
