"""results.json, a paper-style report.md and a retention bar chart (PNG)."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from ftp_deploy.evaluation.methods import DENSE
from ftp_deploy.evaluation.tasks import short_name
from ftp_deploy.fileio import atomic_write_bytes, atomic_write_text, storage
from ftp_deploy.formats.eval_results import HEADLINE_AVERAGE, RESULTS_FILE, EvalResults, TaskScores
from ftp_deploy.formats.measures import Difference
from ftp_deploy.formats.record import REPORT_MD
from ftp_deploy.stats import describe

CHART_FILE = "retention.png"
AVERAGE_LABEL = "headline average"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _accuracy(metrics: TaskScores) -> str:
    """Accuracy % with its standard error, `54.0 ±2.2`, where the results carry one."""
    stderr = metrics.acc_stderr
    return _percent(metrics.acc) + ("" if stderr is None else f" ±{100 * stderr:.1f}")


def table_rows(results: EvalResults) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the method x task table: accuracy % per task, perplexity on scored positions."""
    data, details = results.data, results.retention_details
    header = ["method"]
    for task, facts in data.items():
        header.append(f"{short_name(task)} ppl" if facts.kind == "perplexity" else short_name(task))
    header += ["avg acc", "retention %", "chance-norm. %", "token sparsity", "FLOP ratio"]
    rows = []
    for name, result in results.methods.items():
        row = [name]
        for task, facts in data.items():
            metrics = result.tasks[task]
            row.append(f"{metrics.ppl_scored:.2f}" if facts.kind == "perplexity" else _accuracy(metrics))
        normalized = details.chance_normalized.get(name)
        row += [
            _percent(details.average_accuracy.get(name)),
            _percent(details.average.get(name)),
            _percent(normalized.average if normalized is not None else None),
            f"{result.measured.token_sparsity:.3f}",
            f"{result.measured.flop_ratio:.3f}",
        ]
        rows.append(row)
    return header, rows


def markdown_table(results: EvalResults) -> str:
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_lines(comparisons: dict[str, dict[str, dict[str, Difference]]]) -> list[str]:
    """One table per reference (dense, static): each method's accuracy difference in points, with its interval."""
    lines: list[str] = []
    for reference, per_method in comparisons.items():
        columns = list(dict.fromkeys(task for diffs in per_method.values() for task in diffs))
        if not columns:
            continue
        header = ["method", *(AVERAGE_LABEL if c == HEADLINE_AVERAGE else short_name(c) for c in columns)]
        lines += [
            f"Accuracy minus {reference}, in points, with the paired bootstrap 95% interval over the same items; "
            "'(noise)' marks a difference whose interval contains zero.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for method, diffs in per_method.items():
            cells = [describe(diffs[c], 100) if c in diffs else "-" for c in columns]
            lines.append("| " + " | ".join([method, *cells]) + " |")
        lines.append("")
    return lines


def _notes(results: EvalResults) -> list[str]:
    details, settings = results.retention_details, results.settings
    headline = ", ".join(map(short_name, details.headline_tasks)) or "none"
    notes = [
        f"Accuracy is `{details.metric}` (summed log-likelihood of each choice), in %, ± its standard error; "
        "`acc_norm` (per byte) is in results.json.",
        f"Retention = method accuracy / dense accuracy, averaged over the tasks where dense is at least "
        f"{100 * details.min_margin_over_chance:.0f} points above chance: {headline}. "
        "Chance-normalized: (method - chance) / (dense - chance) over the same tasks.",
        f"Perplexity: {settings.seq_len}-token windows, the last {settings.scored_tokens} positions scored "
        "(FTP_SPEC 1b); over all positions in results.json.",
        "Token sparsity and FLOP ratio are measured on the sequences evaluated (decoder blocks only).",
    ]
    notes += [f"Not in the average: {short_name(task)} ({why})." for task, why in details.other_tasks.items()]
    notes += [f"{name}: {result.description}." for name, result in results.methods.items()]
    return notes


def markdown_report(results: EvalResults, chart: bool) -> str:
    lines = [f"# ftp-deploy eval: {results.model.ref}", ""]
    if results.run is not None:
        lines += [f"Run: `{results.run.dir}`", ""]
    counts = ", ".join(
        f"{short_name(task)} {facts.items if facts.items is not None else facts.windows}/{facts.available}"
        for task, facts in results.data.items()
    )
    lines += [f"Evaluated (items or windows / available): {counts}.", "", markdown_table(results), ""]
    lines += comparison_lines(results.comparisons)
    lines += [f"- {note}" for note in _notes(results)]
    if chart:
        lines += ["", f"![retention per task]({CHART_FILE})"]
    return "\n".join(lines) + "\n"


def retention_chart(results: EvalResults) -> bytes | None:
    """Grouped bars: retention % per multiple-choice task for every method but dense; None without such tasks."""
    details = results.retention_details
    per_task = details.per_task
    tasks = [t for t, facts in results.data.items() if facts.kind == "choice"]
    methods = [m for m in per_task if m != DENSE]
    if not tasks or not methods:
        return None
    figure = Figure(figsize=(max(5.0, 1.3 * len(tasks) + 2), 3.6), dpi=120)
    axes = figure.add_subplot()
    width = 0.8 / len(methods)
    for offset, method in enumerate(methods):
        values = [100 * (per_task[method][t] or 0.0) for t in tasks]
        axes.bar(
            [i + (offset - (len(methods) - 1) / 2) * width for i in range(len(tasks))], values, width, label=method
        )
    axes.axhline(100, color="black", linewidth=0.8)
    # A star marks tasks left out of the headline average (dense too close to chance).
    labels = [short_name(t) if t in details.headline_tasks else f"{short_name(t)}*" for t in tasks]
    axes.set_xticks(range(len(tasks)), labels, rotation=20, ha="right")
    axes.set_ylabel("retention vs dense (%)")
    axes.set_title("accuracy retention per task (* not in the headline average)", fontsize="medium")
    axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def write_report(results: EvalResults, folder: Path) -> list[Path]:
    """Write results.json, report.md and (with multiple-choice tasks) retention.png; return their paths."""
    chart = retention_chart(results)
    written = [folder / RESULTS_FILE, folder / REPORT_MD]
    with storage(folder):
        results.write(folder)
        atomic_write_text(written[1], markdown_report(results, chart is not None))
        if chart is not None:
            written.append(folder / CHART_FILE)
            atomic_write_bytes(written[2], chart)
    return written
