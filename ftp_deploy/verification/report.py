"""report.json, report.md and latency.png of a verify run, written from one set of figures."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from ftp_deploy.fileio import atomic_write_text
from ftp_deploy.formats.record import REPORT_MD
from ftp_deploy.formats.verify_report import (
    LATENCY_PNG,
    STAT_NAMES,
    DecodeReport,
    LatencyComparison,
    ParityReport,
    VerifyReport,
)


def environment(threads: int) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("ftp-deploy", "torch", "onnx", "onnxruntime", "polygraphy", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "gpu": _gpu_name(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def parity_markdown(parity: ParityReport, atol: float, rtol: float) -> str:
    lines = [
        f"Tolerance: atol {atol:g}, rtol {rtol:g} (an element passes if either holds); padded positions excluded; "
        "hidden_* in units of each token's largest |value| in the reference.",
        "",
        "| output | passed | "
        + " | ".join(f"{s} abs" for s in STAT_NAMES)
        + " | "
        + " | ".join(f"{s} rel" for s in STAT_NAMES)
        + " |",
        "|---|---|" + "---|" * (2 * len(STAT_NAMES)),
    ]
    for out in parity.outputs:
        cells = [f"{out.absolute[s]:.3g}" for s in STAT_NAMES] + [f"{out.relative[s]:.3g}" for s in STAT_NAMES]
        lines.append(f"| {out.name} | {'yes' if out.passed else 'NO'} | " + " | ".join(cells) + " |")
    lines += ["", f"Top-1 next-token agreement: {parity.top1_agreement:.2%}"]
    if parity.routing_agreement is not None:
        lines.append(f"Routing agreement over (token, block) decisions: {parity.routing_agreement:.3%}")
    if parity.first_failing_block:
        lines.append(f"First block over tolerance: `{parity.first_failing_block}`")
    shapes = ", ".join(f"{f['batch']}x{f['seq_len']}" for f in parity.feeds)
    lines.append(f"Feeds (batch x length): {shapes}")
    return "\n".join(lines)


def summary_lines(
    parity: ParityReport, latency: LatencyComparison | None, decode: DecodeReport | None = None, decode_note: str = ""
) -> list[str]:
    """The verdict and the figures behind it, each line short enough for any terminal or log."""
    logits = parity.max_abs_diff("logits")
    passed = parity.passed and (decode is None or decode.passed)
    lines = [f"verdict: {'PASS' if passed else 'FAIL'}"]
    if logits is not None:
        tol = parity.tolerance
        lines.append(f"logits max |diff|: {logits:.3g} (atol {tol.atol:g}, rtol {tol.rtol:g})")
    lines.append(f"top-1 next-token agreement: {parity.top1_agreement:.2%}")
    if parity.routing_agreement is not None:
        lines.append(f"routing agreement: {parity.routing_agreement:.3%}")
    lines += [f"failed: {failure}" for failure in parity.failures()]
    if decode is None:
        lines.append(decode_note)
    else:
        lines.append(
            f"decode: {decode.steps} steps, tokens {'identical' if decode.tokens_identical else 'DIFFER'}, logits max "
            f"|diff| {decode.logits_max_abs_diff:.3g}, cache max |diff| {decode.cache_max_abs_diff:.3g}, "
            f"{decode.decode_median_ms:.2f} ms/step"
        )
        lines += [f"failed: {failure}" for failure in decode.failures]
    if latency is not None:
        speedup = latency.speedup()
        for routed in latency.routed:
            vs_dense = f", {speedup[routed.seq_len]:.2f}x dense" if routed.seq_len in speedup else ""
            lines.append(f"{routed.seq_len} tokens: {routed.median_ms:.1f} ms routed{vs_dense}")
    return lines


def latency_markdown(latency: LatencyComparison) -> str:
    speedup = latency.speedup()
    lines = [
        "| tokens | batch | routed median ms | routed p90 ms | routed tok/s | dense median ms | speedup | ideal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, routed in enumerate(latency.routed):
        dense = latency.dense[index] if latency.dense is not None else None
        lines.append(
            f"| {routed.seq_len} | {routed.batch} | {routed.median_ms:.1f} | {routed.p90_ms:.1f} | "
            f"{routed.tokens_per_s:.0f} | {f'{dense.median_ms:.1f}' if dense else '-'} | "
            f"{f'{speedup[routed.seq_len]:.2f}x' if dense else '-'} | {latency.ideal_speedup[routed.seq_len]:.2f}x |"
        )
    lines.append(f"\nPeak resident memory of the verify process: {latency.peak_rss_mib:.0f} MiB")
    return "\n".join(lines)


def plot_latency(latency: LatencyComparison, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    lengths = [r.seq_len for r in latency.routed]
    axis.plot(lengths, [r.median_ms for r in latency.routed], "o-", label="routed")
    if latency.dense is not None:
        axis.plot(lengths, [d.median_ms for d in latency.dense], "s-", label="dense")
    axis.set_xlabel("sequence length (tokens)")
    axis.set_ylabel("median latency (ms)")
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    axis.set_title("Prefill latency")
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    os.replace(tmp, path)


def decode_markdown(decode: DecodeReport | None, note: str) -> str:
    if decode is None:
        return note + "."
    tokens = "yes" if decode.tokens_identical else f"NO (from step {decode.first_token_mismatch})"
    lines = [
        f"{note}: batch {decode.batch}, prompt {decode.prompt_len} tokens (left padded), both fed PyTorch's greedy "
        "tokens.",
        "",
        "| check | result |",
        "|---|---|",
        f"| greedy tokens identical | {tokens} |",
        f"| logits vs masked reference, max abs diff | {decode.logits_max_abs_diff:.3g} "
        f"({'within' if decode.logits_passed else 'BEYOND'} tolerance) |",
        f"| cache lengths per block | {'equal' if decode.cache_lengths_equal else 'DIFFER'} |",
        f"| cached keys/values at valid slots, max abs diff | {decode.cache_max_abs_diff:.3g} |",
        f"| decode step, median ms | {decode.decode_median_ms:.2f} |",
    ]
    return "\n".join(lines)


def write_report(folder: Path, report: VerifyReport) -> None:
    """report.json (the record), report.md and, with latency, latency.png."""
    folder.mkdir(parents=True, exist_ok=True)
    report.write(folder)
    tolerance = report.parity.tolerance
    sections = [
        f"# ftp-deploy verify: {report.artifact}",
        "",
        f"Verdict: **{'PASS' if report.passed else 'FAIL'}**",
        "",
        "## Parity",
        "",
        f"Compared: {report.compared}.",
        "",
        parity_markdown(report.parity, tolerance.atol, tolerance.rtol),
        "",
        "## Decode",
        "",
        decode_markdown(report.decode, report.decode_note),
    ]
    if report.latency is not None:
        plot_latency(report.latency, folder / LATENCY_PNG)
        sections += ["", "## Latency", "", latency_markdown(report.latency), "", f"![latency]({LATENCY_PNG})"]
    atomic_write_text(folder / REPORT_MD, "\n".join(sections) + "\n")
