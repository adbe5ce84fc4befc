"""The held-out table of a training run: each routing's KL with its standard error over windows, and
its paired difference to the static baselines (the same windows, so pairing is valid)."""

from __future__ import annotations

from ftp_deploy.fidelity import Fidelity
from ftp_deploy.formats.record import to_json
from ftp_deploy.formats.run_state import HeldoutRow
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.stats import paired_bootstrap, standard_error
from ftp_deploy.training.reference import DenseReference

BASELINES = ("static_uniform", "prior_uniform", "static_searched")


def heldout_scores(reference: DenseReference, routings: dict[str, RoutedModel]) -> dict[str, HeldoutRow]:
    """Per routing: KL, top-1 agreement, perplexities, its standard error over windows, and `kl_minus[baseline]`."""
    totals = {name: reference.fidelity(model) for name, model in routings.items()}
    return scores_from_totals(totals)


def scores_from_totals(totals: dict[str, Fidelity]) -> dict[str, HeldoutRow]:
    rows = {
        name: HeldoutRow(
            **to_json(fidelity.summary()),
            kl_stderr=standard_error(fidelity.window_kl),
            window_kl=list(fidelity.window_kl),
        )
        for name, fidelity in totals.items()
    }
    for name, row in rows.items():
        row.kl_minus = {
            baseline: paired_bootstrap([(row.window_kl, rows[baseline].window_kl)])
            for baseline in BASELINES
            if baseline in rows and baseline != name
        }
    return rows
