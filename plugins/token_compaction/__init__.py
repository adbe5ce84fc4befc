"""The `ftp::TokenCompact` / `ftp::TokenScatter` operator pair (contract in plugins/README.md).

The PyTorch reference loads on first use of `token_compact` / `token_scatter`, so importing the
torch-free contract (as the command line does) does not load PyTorch.
"""

from typing import TYPE_CHECKING, Any

from ftp_deploy.plugins.token_compaction.contract import (
    DOMAIN,
    OP_VERSION,
    SPARSITY_DEN,
    kept_count,
)

if TYPE_CHECKING:
    from ftp_deploy.plugins.token_compaction.reference import token_compact, token_scatter

__all__ = ["DOMAIN", "OP_VERSION", "SPARSITY_DEN", "kept_count", "token_compact", "token_scatter"]


def __getattr__(name: str) -> Any:
    if name in ("token_compact", "token_scatter"):
        from ftp_deploy.plugins.token_compaction import reference

        return getattr(reference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
