"""The few lines `make demo` ends with: what was trained, how close it is to dense, how much faster.

python -m ftp_deploy.demo_summary RUN_DIR VERIFY_REPORT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from ftp_deploy.artifacts import load_artifact
from ftp_deploy.errors import ArtifactError
from ftp_deploy.formats.record import REPORT_MD
from ftp_deploy.formats.routed_config import TrainingRecord
from ftp_deploy.formats.run_state import TrainPhase
from ftp_deploy.formats.verify_report import VerifyReport
from ftp_deploy.training.runfolder import RunFolder


def demo_summary(run_dir: Path, verify_dir: Path) -> list[str]:
    """Plain sentences from the run folder and verify's report.json (nothing is recomputed)."""
    artifact = load_artifact(run_dir)
    training = artifact.training
    state = RunFolder(run_dir).read_state()
    heldout, train = state.heldout, state.phases.train
    if heldout is None or train is None:
        raise ArtifactError(f"{run_dir} has no held-out scores: its training run did not finish")
    report = VerifyReport.read(verify_dir, f"{verify_dir} holds no verify report ({VerifyReport.FILE})")
    parity, latency, decode = report.parity, report.latency, report.decode
    trained, static = heldout["trained"], heldout["static_uniform"]
    lines = [
        f"Trained: a {artifact.router_spec.kind} router for {artifact.base.ref} at mean sparsity "
        f"{artifact.schedule.mean():.2f}: {_training_change(train, training)}",
        f"Close to dense: on held-out text, KL to dense {trained.kl:.4f} (static router, uniform schedule: "
        f"{static.kl:.4f}); perplexity {trained.perplexity:.2f} vs dense {trained.dense_perplexity:.2f}; "
        f"its top next-token choice is dense's {trained.top1_agreement:.0%} of the time.",
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m ftp_deploy.demo_summary RUN_DIR VERIFY_REPORT_DIR", file=sys.stderr)
        return 2
    try:
        lines = demo_summary(Path(args[0]), Path(args[1]))
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
