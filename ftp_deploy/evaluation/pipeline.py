"""`ftp-deploy eval` as library calls: check every input, score every method, write the report.

All inputs (tasks, files, options, the run folder) are checked before the model loads, and
nothing is written unless the evaluation finishes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ftp_deploy.artifacts import RoutedArtifact, load_artifact, load_routed
from ftp_deploy.data_root import data_root
from ftp_deploy.errors import ArtifactError
from ftp_deploy.evaluation.baselines import build_methods
from ftp_deploy.evaluation.comparisons import comparisons
from ftp_deploy.evaluation.methods import DENSE, STATIC, parse_baselines
from ftp_deploy.evaluation.options import REPORT_SUBFOLDER, EvalOptions
from ftp_deploy.evaluation.report import write_report
from ftp_deploy.evaluation.retention import retention_summary
from ftp_deploy.evaluation.runner import EvalSettings, evaluate_methods, prepare
from ftp_deploy.evaluation.shortgpt import calibration_file, calibration_ids
from ftp_deploy.evaluation.tasks import (
    SUBSET_SEED,
    Task,
    check_limit,
    load_task,
    parse_task_names,
)
from ftp_deploy.fidelity import SCORED_POSITIONS
from ftp_deploy.fileio import sha256_file
from ftp_deploy.formats.eval_results import EvalResults, EvaluatedModel, MethodResult, SourceRun
from ftp_deploy.formats.eval_results import Settings as ResultSettings
from ftp_deploy.formats.record import to_json
from ftp_deploy.formats.routed_config import ROUTER_FILE
from ftp_deploy.models import LoadedModel
from ftp_deploy.placement import CPU, Placement, resolve_placement
from ftp_deploy.progress import NO_PROGRESS, Progress
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.schedule import Schedule

# Context longer than this is cut from the left, as lm-evaluation-harness does at the model's limit.
FALLBACK_MAX_LENGTH = 2048


def weights_sha256(model: Any) -> str:
    """sha256 over the parameter names and bytes, so results name the exact weights they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(memoryview(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy()))
    return digest.hexdigest()


def load_tasks(tasks: str, data_dir: Path | None, limit: int | None) -> list[Task]:
    check_limit(limit)
    return [load_task(name, data_dir, limit) for name in parse_task_names(tasks)]


def evaluate_model(
    loaded: LoadedModel,
    tasks: list[Task],
    baselines: list[str],
    schedule: Schedule,
    schedule_source: str,
    settings: EvalSettings,
    progress: Progress,
    calibration: Path | None = None,
    ftp: RoutedModel | None = None,
    measured: dict[str, MethodResult] | None = None,
) -> EvalResults:
    """Every number of one evaluation: model and data hashes, each method's metrics and compute, retention.

    `measured` holds methods already scored on the same model, tasks and settings (dense, when
    one benchmark evaluates several sparsities); they are reported, not scored again.
    """
    measured = measured or {}
    start = time.perf_counter()
    settings.check()
    config = loaded.model.config
    max_length = int(getattr(config, "max_position_embeddings", 0) or FALLBACK_MAX_LENGTH)
    prepared = [prepare(task, loaded.tokenizer, settings, max_length) for task in tasks]
    calibration_batch = calibration_ids(loaded.tokenizer, calibration) if calibration is not None else None
    methods = build_methods(
        [name for name in baselines if name not in measured],
        loaded.model,
        schedule,
        settings.seq_len,
        schedule_source,
        calibration_batch,
        ftp,
    )
    scores = measured | evaluate_methods(methods, prepared, settings, progress)
    data = {p.task.name: p.facts() for p in prepared}
    details = retention_summary(scores, data, DENSE)
    return EvalResults(
        model=EvaluatedModel(**to_json(loaded.ref), weights_sha256=weights_sha256(loaded.model)),
        settings=ResultSettings(
            settings.seq_len, settings.scored_tokens, settings.batch_tokens, SUBSET_SEED, execution="compact"
        ),
        data=data,
        methods=scores,
        retention=dict(details.average),
        retention_details=details,
        comparisons=comparisons(scores, data, details.headline_tasks, [DENSE, STATIC]),
        wall_seconds=time.perf_counter() - start,
    )


def load_trained_run(
    run_dir: Path, model: str | None, trust_remote_code: bool = False, placement: Placement = CPU
) -> tuple[LoadedModel, RoutedModel, RoutedArtifact]:
    """The base model and the trained routed model of a run folder; a run without a trained router is refused."""
    artifact = load_artifact(run_dir)
    if not artifact.has_trained_router:
        raise ArtifactError(
            f"{run_dir} holds no trained router (router kind {artifact.router_spec.kind!r}); "
            "train one with `ftp-deploy train` first"
        )
    routed, loaded, _ = load_routed(artifact, model, placement, trust_remote_code=trust_remote_code)
    return loaded, routed, artifact


@dataclass
class Evaluation:
    """What `ftp-deploy eval` produced: the results (also in results.json) and every file it wrote."""

    results: EvalResults
    files: list[Path]


def evaluate(
    run_dir: Path | str, options: EvalOptions | None = None, progress: Progress = NO_PROGRESS, **fields: Any
) -> Evaluation:
    """Evaluate a trained run against the baselines; write the report to `report` (default RUN_DIR/eval).

    `options` (default EvalOptions()) with `fields` replaced by name, as the command line names them.
    `scored_tokens` defaults to the scored positions of FTP_SPEC 1b (ftp_deploy.fidelity).
    """
    opts, run_dir = replace(options or EvalOptions(), **fields), Path(run_dir)
    placement = resolve_placement(opts.device, opts.dtype, opts.device_map)
    settings = EvalSettings(opts.seq_len, SCORED_POSITIONS if opts.scored_tokens is None else opts.scored_tokens)
    settings.check()
    baseline_names = parse_baselines(opts.baselines)
    data_dir = opts.data_dir or data_root()
    task_list = load_tasks(opts.tasks, data_dir, opts.limit)
    calibration = calibration_file(data_dir) if "shortgpt" in baseline_names else None
    loaded, routed, artifact = load_trained_run(run_dir, opts.model, opts.trust_remote_code, placement)
    results = evaluate_model(
        loaded,
        task_list,
        baseline_names,
        artifact.schedule,
        "searched",
        settings,
        progress,
        calibration,
        routed,
    )
    results.run = SourceRun(str(run_dir), sha256_file(run_dir / ROUTER_FILE), artifact.routing_mode, artifact.training)
    results.settings.limit, results.settings.placement = opts.limit, placement
    return Evaluation(results, write_report(results, opts.report or run_dir / REPORT_SUBFOLDER))
