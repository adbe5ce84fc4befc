"""Human-readable summaries of a routed-model folder."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ftp_deploy.artifacts import load_artifact
from ftp_deploy.formats.record import to_json
from ftp_deploy.plugins.token_compaction.contract import kept_count

SUMMARY_SEQ_LEN = 512


def achieved_sparsity(thousandths: tuple[int, ...], seq_len: int) -> float:
    """Fraction of (token, block) pairs skipped by top-k capacity at `seq_len` tokens."""
    kept = sum(kept_count(seq_len, n) for n in thousandths)
    return 1 - kept / (seq_len * len(thousandths))


def summarize_artifact(run_dir: Path) -> Group:
    artifact = load_artifact(run_dir)
    params = artifact.router_record().parameters
    facts = Table(show_header=False, box=None)
    facts.add_row("base model", f"{artifact.base.ref} ({artifact.base.model_type}, {artifact.base.num_layers} layers)")
    facts.add_row("router", f"{artifact.router_spec.kind}, {params} parameters, {artifact.routing_mode} routing")
    facts.add_row("target mean sparsity", f"{artifact.schedule.mean():.3f}")
    facts.add_row(
        f"achieved at {SUMMARY_SEQ_LEN} tokens",
        f"{achieved_sparsity(artifact.schedule.thousandths, SUMMARY_SEQ_LEN):.3f} (top-k capacity)",
    )
    for key, value in (to_json(artifact.training) if artifact.training is not None else {}).items():
        if isinstance(value, (int, float, str)):
            facts.add_row(f"training: {key}", str(value))
    schedule = Table(title="per-block sparsity", show_lines=False)
    schedule.add_column("block", justify="right")
    schedule.add_column("sparsity", justify="right")
    schedule.add_column("")
    for block, s in enumerate(artifact.schedule.sparsities):
        schedule.add_row(str(block), f"{s:.3f}", Text("█" * round(s * 40), style="cyan"))
    return Group(facts, schedule)
