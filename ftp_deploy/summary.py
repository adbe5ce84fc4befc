"""Human-readable summaries: a routed-model folder (`info`), what a run achieved (`summary`)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ftp_deploy.artifacts import load_artifact
from ftp_deploy.errors import ArtifactError
from ftp_deploy.formats.record import REPORT_MD, to_json
from ftp_deploy.formats.routed_config import TrainingRecord
from ftp_deploy.formats.run_state import RunState, TrainPhase
from ftp_deploy.formats.verify_report import VerifyReport
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


def run_summary(run_dir: Path, verify_dir: Path | None = None) -> list[str]:
    """Plain sentences from the run folder and, given, verify's report folder (nothing is recomputed).

    What training changed and how close the routed model is to dense; with `verify_dir`, also how
    the export matched PyTorch, how its generation checked and how much faster it was.
    """
    artifact = load_artifact(run_dir)
    training = artifact.training
    state = RunState.read(run_dir, f"{run_dir} is not a training run folder: {RunState.FILE} is missing")
    heldout, train = state.heldout, state.phases.train
    if heldout is None or train is None:
        raise ArtifactError(f"{run_dir} has no held-out scores: its training run did not finish")
    trained, static = heldout["trained"], heldout["static_uniform"]
    lines = [
        f"Trained: a {artifact.router_spec.kind} router for {artifact.base.ref} at mean sparsity "
        f"{artifact.schedule.mean():.2f}: {_training_change(train, training)}",
        f"Close to dense: on held-out text, KL to dense {trained.kl:.4f} (static router, uniform schedule: "
        f"{static.kl:.4f}); perplexity {trained.perplexity:.2f} vs dense {trained.dense_perplexity:.2f}; "
        f"its top next-token choice is dense's {trained.top1_agreement:.0%} of the time.",
    ]
    if verify_dir is None:
        return lines
    report = VerifyReport.read(verify_dir, f"{verify_dir} holds no verify report ({VerifyReport.FILE})")
    parity, latency, decode = report.parity, report.latency, report.decode
    lines += [
        f"Exported graph vs PyTorch: {'PASS' if parity.passed else 'FAIL'}, top-1 agreement "
        f"{parity.top1_agreement:.2%}"
        + (f", routing agreement {parity.routing_agreement:.3%}" if parity.routing_agreement is not None else "")
        + ".",
    ]
    if decode is not None:
        lines.append(
            f"Generation: the export's prefill and {decode.steps} decode steps "
            f"{'match' if decode.passed else 'do NOT match'} PyTorch's cached decode (greedy tokens "
            f"{'identical' if decode.tokens_identical else 'differ'}, logits max |diff| "
            f"{decode.logits_max_abs_diff:.1e}); a decode step takes {decode.decode_median_ms:.1f} ms."
        )
    speedups = latency.speedup() if latency is not None else {}
    if latency is not None and speedups:
        longest = max(speedups)
        lines.append(
            f"Faster: ONNX Runtime prefill {speedups[longest]:.2f}x the dense export at {longest} tokens "
            f"(ideal by FLOPs {latency.ideal_speedup[longest]:.2f}x); "
            + ", ".join(f"{speedups[n]:.2f}x at {n}" for n in sorted(speedups) if n != longest)
            + f". Full tables: {verify_dir / REPORT_MD}."
        )
    return lines


def _training_change(train: TrainPhase, training: TrainingRecord | None) -> str:
    """What training did to the router, by the validation checks it was chosen on."""
    if training is None:
        raise ArtifactError("the run's routed model has no training record: it was not made by ftp-deploy train")
    checks = train.validation
    start, best_step = checks[0][1], training.router_from_step
    best = dict(checks)[best_step]
    steps = f"{training.steps} router steps in {training.train_seconds:.0f} s"
    if not training.steps:
        return "0 router steps: the time budget was spent before training began, so the step-0 router is kept."
    prior = training.prior_attention_weight
    origin = f"the attention-weighted prior (weight {prior:g})" if prior else "the static router's order"
    if best_step == 0:
        return (
            f"{steps}; validation KL {start:.4f} at step 0 ({origin}), and no later check did better "
            f"(last {checks[-1][1]:.4f}), so the step-0 router is kept."
        )
    return (
        f"{steps}; validation KL {start:.4f} at step 0 ({origin}) fell to {best:.4f} at step {best_step} "
        f"({(best - start) / start:+.1%}); that router is kept."
    )
