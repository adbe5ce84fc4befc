"""RUN_DIR/report.md with the schedule as a bar chart and the loss curves (matplotlib, Agg)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # chosen before pyplot loads: files only, no display
import matplotlib.pyplot as plt

from ftp_deploy.errors import ArtifactError
from ftp_deploy.fileio import atomic_write_bytes, atomic_write_text
from ftp_deploy.formats.record import REPORT_MD, from_json
from ftp_deploy.formats.run_state import DataRecord, HeldoutRow, PriorPhase, RunState, SearchPhase, TrainPhase
from ftp_deploy.stats import describe
from ftp_deploy.training.runfolder import storage
from ftp_deploy.training.settings import RunSettings

SCHEDULE_PNG = "schedule.png"
LOSSES_PNG = "losses.png"
ROUTINGS = (
    ("static_uniform", "static router, uniform schedule"),
    ("prior_uniform", "static router + sink prefix, uniform schedule"),
    ("static_searched", "static router (+ the run's sink prefix), searched schedule"),
    ("prior_searched", "attention-weighted prior (untrained), searched schedule"),
    ("trained", "trained router, fine-tuned schedule"),
)
# The same rows in a terminal's table, where a label must fit a narrow column (report.md has the long ones).
SHORT_LABELS = {
    "static_uniform": "static, uniform",
    "prior_uniform": "static+sink, uniform",
    "static_searched": "static, searched",
    "prior_searched": "prior, searched",
    "trained": "trained, tuned",
}


@dataclass(frozen=True)
class FinishedRun:
    """The parts of a finished run's state its report is made of, each known to be there."""

    settings: RunSettings
    data: DataRecord
    search: SearchPhase
    prior: PriorPhase
    train: TrainPhase
    finetune: SearchPhase
    heldout: dict[str, HeldoutRow]

    @classmethod
    def of(cls, state: RunState) -> FinishedRun:
        phases, data, heldout = state.phases, state.data, state.heldout
        search, prior, train, finetune = phases.search, phases.prior, phases.train, phases.finetune
        if data is None or search is None or prior is None or train is None or finetune is None or heldout is None:
            raise ArtifactError("the training run has not finished: its report needs every phase and held-out scores")
        return cls(from_json(RunSettings, state.settings), data, search, prior, train, finetune, heldout)


def write_report(folder: Path, state: RunState, metrics: list[dict[str, Any]]) -> None:
    run = FinishedRun.of(state)
    for name, figure in ((SCHEDULE_PNG, _schedule_figure(run)), (LOSSES_PNG, _loss_figure(run, metrics))):
        with storage(folder / name):
            atomic_write_bytes(folder / name, _png(figure))
    with storage(folder / REPORT_MD):
        atomic_write_text(folder / REPORT_MD, report_markdown(run))


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _schedule_figure(run: FinishedRun) -> Any:
    searched = [n / 1000 for n in run.search.best_thousandths]
    final = [n / 1000 for n in run.finetune.best_thousandths]
    blocks = range(len(final))
    figure, axis = plt.subplots(figsize=(max(6.0, 0.28 * len(final)), 3.2))
    axis.bar(blocks, final, color="tab:blue", label="final (fine-tuned)")
    axis.step(blocks, searched, where="mid", color="tab:orange", label="searched (static router)")
    axis.axhline(run.settings.sparsity, color="gray", linestyle="--", linewidth=1, label="target mean")
    axis.set_xlabel("decoder block")
    axis.set_ylabel("required sparsity")
    axis.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.88)
    return figure


def _loss_figure(run: FinishedRun, metrics: list[dict[str, Any]]) -> Any:
    train = [r for r in metrics if r["phase"] == "train"]
    figure, (losses, sparsity, search) = plt.subplots(1, 3, figsize=(13, 3.4))
    steps = [r["step"] for r in train]
    for key, label in (("loss", "total"), ("distill", "distillation KL"), ("guide", "guide BCE")):
        losses.plot(steps, [r[key] for r in train], label=label)
    losses.plot(steps, [r["sparsity_loss"] for r in train], label="sparsity penalty")
    checks = run.train.validation
    losses.plot([s for s, _ in checks], [kl for _, kl in checks], "o--", label="validation KL (checks)")
    losses.set_yscale("symlog", linthresh=1e-3)
    losses.set_xlabel("step")
    losses.set_title("training losses")
    losses.legend(fontsize=8, loc="upper right")
    sparsity.plot(steps, [r["hard_sparsity"] for r in train], label="achieved (top-k)")
    sparsity.plot(steps, [r["soft_sparsity"] for r in train], label="expected from keep probabilities")
    sparsity.plot(steps, [r["guide_weight"] for r in train], label="guide weight", linestyle=":")
    sparsity.set_xlabel("step")
    sparsity.set_title("sparsity and guide weight")
    sparsity.legend(fontsize=8, loc="upper right")
    for phase, label in (("search", "search (static router)"), ("finetune", "fine-tune (trained router)")):
        rows = [r for r in metrics if r["phase"] == phase]
        search.plot([r["index"] for r in rows], [r["best"] for r in rows], marker="o", label=label)
    search.set_xlabel("generation")
    search.xaxis.get_major_locator().set_params(integer=True)
    search.set_title("best calibration KL")
    search.legend(fontsize=8, loc="upper right")
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.9, wspace=0.3)
    return figure


def _validation_line(search: SearchPhase, start: str) -> str:
    """Whether a search's winner beat its start on the validation blocks, and so was kept."""
    checked = search.validation
    if checked is None:
        return f"{start} schedule kept (the search found nothing better)"
    kept = "found" if checked.found < checked.start else start
    return f"{start} {checked.start:.4f}, found {checked.found:.4f}: {kept} schedule kept"


def _prior_line(prior: PriorPhase) -> str:
    chosen = "the static order" if not prior.attention_weight else f"attention weight {prior.attention_weight:g}"
    scored = ", ".join(f"{w:g}: {kl:.4f}" for w, kl in prior.candidates)
    return f"{chosen} ({'validation KL by weight: ' + scored if scored else 'no other candidate'})"


def report_markdown(run: FinishedRun) -> str:
    settings, data, train, heldout = run.settings, run.data, run.train, run.heldout
    scored = settings.train.scored
    budget_note = " (stopped by the time budget)" if train.stopped_by_time_budget else ""
    steps = train.checkpoint.step if train.checkpoint is not None else 0
    lines = [
        f"# FTP router training: {settings.model} at sparsity {settings.sparsity:g}",
        "",
        "| | |",
        "|---|---|",
        f"| data | {data.source}: {data.train_blocks} training blocks (the last {data.validation_blocks} "
        f"validate the choices, never trained on) "
        f"and {data.heldout_blocks} held-out blocks of {data.seq_len} tokens |",
        f"| seed | {settings.seed} |",
        f"| training steps | {steps} of {settings.train.steps}{budget_note}, batch {settings.train.batch_size} |",
        f"| router kept | the weights after step {train.best_step}, best of the validation checks "
        f"(KL {min(kl for _, kl in train.validation):.4f}; {train.validation[0][1]:.4f} at the start) |",
        f"| router prior | {_prior_line(run.prior)} |",
        f"| wall time | search {run.search.seconds:.0f} s, training {train.seconds:.0f} s, "
        f"fine-tune {run.finetune.seconds:.0f} s |",
        f"| calibration KL | uniform {run.search.start_fitness:.4f}, searched "
        f"{run.search.best_fitness:.4f} (static router); trained router, fine-tuned schedule "
        f"{run.finetune.best_fitness:.4f} |",
        f"| validation KL | {_validation_line(run.search, 'uniform')}; {_validation_line(run.finetune, 'searched')} |",
        "",
        f"## Held-out blocks (the last {scored} predictions of each block)",
        "",
        "| routing | KL to dense ± s.e. | KL minus static uniform [95%] | top-1 agreement | perplexity |",
        "|---|---|---|---|---|",
        f"| dense | | | | {heldout['trained'].dense_perplexity:.2f} |",
    ]
    for key, label in ROUTINGS:
        if key not in heldout:
            continue
        row = heldout[key]
        versus = row.kl_minus.get("static_uniform")
        lines.append(
            f"| {label} | {row.kl:.4f} ± {row.kl_stderr:.4f} | "
            f"{'' if versus is None else describe(versus, digits=4)} | {row.top1_agreement:.1%} | "
            f"{row.perplexity:.2f} |"
        )
    lines += [
        "",
        f"Standard errors and paired bootstrap intervals are over the {data.heldout_blocks} held-out blocks "
        "(the same blocks for every routing); '(noise)' marks a difference whose interval contains zero.",
    ]
    final = run.finetune.best_thousandths
    lines += [
        "",
        "## Schedule",
        "",
        f"![per-block sparsity]({SCHEDULE_PNG})",
        "",
        f"Final schedule in thousandths: {', '.join(str(n) for n in final)}.",
        "",
        "## Training",
        "",
        f"![loss curves]({LOSSES_PNG})",
        "",
    ]
    return "\n".join(lines)
