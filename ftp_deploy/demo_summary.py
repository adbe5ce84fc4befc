"""The few lines `make demo` ends with: what was trained, how close it is to dense, how much faster.

    python -m ftp_deploy.demo_summary RUN_DIR VERIFY_REPORT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ftp_deploy.artifacts import load_artifact
from ftp_deploy.errors import ArtifactError
from ftp_deploy.training.runfolder import RunFolder


def demo_summary(run_dir: Path, verify_dir: Path) -> list[str]:
    """Plain sentences from the run folder and verify's report.json (nothing is recomputed)."""
    artifact = load_artifact(run_dir)
    training = artifact.training
    heldout = RunFolder(run_dir).read_state().get("heldout")
    if heldout is None:
        raise ArtifactError(f"{run_dir} has no held-out scores: its training run did not finish")
    report = _read_report(verify_dir / "report.json")
    parity, latency = report["parity"], report.get("latency") or {}
    trained, static = heldout["trained"], heldout["static_uniform"]
    prior = training.get("prior_attention_weight")
    start = f"the attention-weighted prior (weight {prior:g})" if prior else "which routes like the static router"
    kept = (
        f"kept the router of step {training['router_from_step']} of {training['steps']}"
        if training.get("router_from_step")
        else f"kept the step-0 router, {start}: no later checkpoint did better"
    )
    lines = [
        f"Trained: a {artifact.router_spec.kind} router for {artifact.base.ref} at mean sparsity "
        f"{artifact.schedule.mean():.2f} in {training['train_seconds']:.0f} s of training; {kept}.",
        f"Close to dense: on held-out text, KL to dense {trained['kl']:.4f} (static router, uniform schedule: "
        f"{static['kl']:.4f}); perplexity {trained['perplexity']:.2f} vs dense {trained['dense_perplexity']:.2f}; "
        f"its top next-token choice is dense's {trained['top1_agreement']:.0%} of the time.",
        f"Exported graph vs PyTorch: {'PASS' if parity['passed'] else 'FAIL'}, top-1 agreement "
        f"{parity['top1_agreement']:.2%}"
        + (f", routing agreement {parity['routing_agreement']:.3%}" if parity.get("routing_agreement") else "")
        + ".",
    ]
    speedups = {int(length): value for length, value in (latency.get("speedup") or {}).items()}
    if speedups:
        longest = max(speedups)
        lines.append(
            f"Faster: ONNX Runtime prefill {speedups[longest]:.2f}x the dense export at {longest} tokens "
            f"(ideal by FLOPs {latency['ideal_speedup'][str(longest)]:.2f}x); "
            + ", ".join(f"{speedups[n]:.2f}x at {n}" for n in sorted(speedups) if n != longest)
            + f". Full tables: {verify_dir / 'report.md'}."
        )
    return lines


def _read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path} could not be read: {err}") from err
    if not isinstance(report, dict) or "parity" not in report:
        raise ArtifactError(f"{path} is not a verify report")
    return report


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
