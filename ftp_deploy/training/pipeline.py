"""`ftp-deploy train` as a library call: search, train, fine-tune, then the artifact and report.

The phases follow FTP_SPEC section 5's workflow: (1) a genetic schedule search with the
static router, (2) router training on that schedule, (3) a shorter search around it with
the trained router. Each finished phase is recorded in run.json, and training checkpoints
every few steps, so `resume=True` picks up where an interrupted run stopped.

Several processes (`ranks`) share the work: the searches' fitness evaluations and the
training batches are split over them, every decision is the same on every rank, and only
rank 0 reads and writes the run folder and scores the held-out blocks at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from ftp_deploy import __version__
from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.errors import ArtifactError, ConfigError, DataError
from ftp_deploy.flops import dense_block_weights
from ftp_deploy.formats.record import from_json
from ftp_deploy.formats.routed_config import TrainingRecord
from ftp_deploy.formats.run_state import RUN_FILE, HeldoutRow, PriorPhase, RunState, TrainPhase, Validated
from ftp_deploy.models import LoadedModel, load_base_model
from ftp_deploy.placement import CPU, Placement
from ftp_deploy.progress import NO_PROGRESS, Progress
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import FactorRouter, RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.budget import TimeBudget
from ftp_deploy.training.data import TokenData, load_token_data
from ftp_deploy.training.heldout import heldout_scores
from ftp_deploy.training.ranks import ONE_PROCESS, Ranks
from ftp_deploy.training.reference import DenseReference
from ftp_deploy.training.report import write_report
from ftp_deploy.training.runfolder import RunFolder, storage
from ftp_deploy.training.search import ScheduleSpace, SearchConfig, SearchGeneration, SearchResult, genetic_search
from ftp_deploy.training.self_data import self_sampled_blocks
from ftp_deploy.training.settings import RunSettings, differences
from ftp_deploy.training.trainer import ROUTER_SPEC, RouterTrainer, StepMetrics, new_router

STATIC = RouterSpec(kind="static")
SEARCH_PHASES = ("search", "finetune")  # their index offsets the seed, so the two searches differ
StepHook = Callable[[StepMetrics], None]


def run_training(
    settings: RunSettings,
    out: Path,
    resume: bool = False,
    time_budget: float | None = None,
    progress: Progress = NO_PROGRESS,
    on_step: StepHook | None = None,
    trust_remote_code: bool = False,
    placement: Placement = CPU,
    checkpoint_activations: bool = False,
    ranks: Ranks = ONE_PROCESS,
) -> RunState:
    """Train a router into `out` and return the run state; `time_budget` is in minutes.

    Nothing is written to `out` until the settings, the model and the data have all
    been checked. `on_step` sees every training step's metrics (tests use it to stop a run).
    `placement` and `checkpoint_activations` change where and how the frozen model computes,
    not what the run is: a run may resume with others.
    Every rank of a multi-process run calls this with the same arguments and its own `ranks`.
    """
    budget = TimeBudget(time_budget)
    ranks.share(settings.train.batch_size)  # refuses a global batch too small to share, before any work
    folder = RunFolder(out, writes=ranks.is_main)
    state = ranks.from_main(lambda: _resumed_state(folder, settings) if resume else _new_run(folder))
    if state.finished:
        progress.note(f"{out} already holds a finished run; nothing to do")
        return state
    with progress.phase(f"load {settings.model}"):
        loaded = load_base_model(settings.model, placement, trust_remote_code=trust_remote_code)
    _check_model(state, loaded, out)
    with progress.phase(f"read {settings.data}"):
        data = ranks.from_main(
            lambda: load_token_data(
                settings.data,
                loaded.tokenizer,
                settings.data_config,
                settings.seed,
                lambda count, seq_len, seed: self_sampled_blocks(
                    loaded.model, loaded.tokenizer, loaded.ref, count, seq_len, seed
                ),
            )
        )
    _check_data(state, data, out)
    state.settings, state.model, state.data = settings.to_json(), loaded.ref, data.describe()
    state.placement, state.processes = placement, ranks.world  # this invocation's: a run may resume elsewhere
    run = _Run(settings, folder, state, loaded, data, budget, progress, on_step, ranks, checkpoint_activations)
    state.data.validation_blocks = int(run.validation_blocks.shape[0])
    folder.write_state(state)
    outcome = run.train_and_tune()
    if ranks.is_main:
        run.finish(outcome)
    return state


def _new_run(folder: RunFolder) -> RunState:
    if folder.path.exists() and not folder.path.is_dir():
        raise ArtifactError(f"--out {folder.path} is a file, not a folder")
    if folder.holds_files():
        raise ArtifactError(
            f"{folder.path} already holds files; pass --resume to continue the run there, or choose another --out"
        )
    return RunState()


def _resumed_state(folder: RunFolder, settings: RunSettings) -> RunState:
    state = folder.read_state()
    saved = from_json(RunSettings, state.settings)
    if (saved.model, saved.sparsity) != (settings.model, settings.sparsity):
        raise ConfigError(
            f"{folder.path} holds a run of {saved.model!r} at sparsity {saved.sparsity:g}, not "
            f"{settings.model!r} at {settings.sparsity:g}; resume it with the same model and sparsity, "
            "or choose another --out"
        )
    changed = differences(state.settings, settings.to_json())
    if changed:
        raise ConfigError(f"{folder.path} was started with other settings ({'; '.join(changed)}); resume with the same")
    return state


def _check_model(state: RunState, loaded: LoadedModel, out: Path) -> None:
    if state.model is not None and state.model.config_hash != loaded.ref.config_hash:
        raise ConfigError(f"{out} was trained on another architecture than {loaded.ref.ref!r} (config hash differs)")


def _check_data(state: RunState, data: TokenData, out: Path) -> None:
    if state.data is not None and state.data.fingerprint != data.fingerprint:
        raise DataError(f"the data {data.source} is not what {out} was trained on (its tokens changed)")


class _Run:
    """The phases of one invocation; finished phases are read back from run.json."""

    def __init__(
        self,
        settings: RunSettings,
        folder: RunFolder,
        state: RunState,
        loaded: LoadedModel,
        data: TokenData,
        budget: TimeBudget,
        progress: Progress,
        on_step: StepHook | None,
        ranks: Ranks,
        checkpoint_activations: bool = False,
    ) -> None:
        self.settings = settings
        self.checkpoint_activations = checkpoint_activations
        self.folder = folder
        self.state = state
        self.phases = state.phases
        self.base = loaded.model
        self.ref = loaded.ref
        self.data = data
        self.budget = budget
        self.progress = progress
        self.on_step = on_step
        self.ranks = ranks
        seq_len = settings.data_config.seq_len
        weights = dense_block_weights(self.base.config, seq_len)
        self.space = ScheduleSpace(settings.sparsity, weights, settings.s_max, settings.monotone_schedules)
        self.uniform = Schedule.uniform(settings.sparsity, len(self.base.model.layers), settings.s_max)
        self._calibration: DenseReference | None = None
        self._validation: DenseReference | None = None
        # The last blocks check the choices; training and the searches' batch never see them.
        wanted, blocks = settings.train.validation_batch, int(data.train.shape[0])
        held = min(wanted, max(1, blocks // 4))
        if held < wanted:
            progress.note(
                f"--validation-batch {wanted}: the data has {blocks} training blocks and at most a quarter "
                f"of them validate, so {held} do"
            )
        self.training_blocks, self.validation_blocks = data.train[:-held], data.train[-held:]
        # The routing prior: the static order plus the run's sink prefix; the router starts from it.
        self.static = replace(STATIC, sink_fraction=settings.sink_fraction)
        self.learned = replace(ROUTER_SPEC, sink_fraction=settings.sink_fraction)

    def _prior_rows(self) -> dict[str, RoutedModel]:
        """With a sink prefix, the held-out table also shows the prior alone on the uniform schedule."""
        if self.static == STATIC:
            return {}
        return {"prior_uniform": RoutedModel(self.base, self.uniform, self.static)}

    def _attention_prior_rows(self, schedule: Schedule) -> dict[str, RoutedModel]:
        """With an attention-weighted prior, the held-out table also shows that prior untrained (step 0)."""
        weight = self._prior.attention_weight
        if not weight:
            return {}
        return {"prior_searched": self._routed(schedule, new_router(self.settings.seed, attention_weight=weight))}

    @property
    def calibration(self) -> DenseReference:
        """The searches' fixed batch; its dense log-probs are computed on first use only."""
        if self._calibration is None:
            blocks = self.training_blocks[: self.settings.train.search_batch]
            self._calibration = DenseReference(self.base, blocks, self.settings.train.scored)
        return self._calibration

    @property
    def validation(self) -> DenseReference:
        if self._validation is None:
            self._validation = DenseReference(self.base, self.validation_blocks, self.settings.train.scored)
        return self._validation

    def train_and_tune(self) -> tuple[SearchResult, FactorRouter, SearchResult]:
        searched = self.search(
            "search",
            "schedule search (static router)",
            self.settings.search,
            self.uniform,
            lambda s: RoutedModel(self.base, s, self.static),
        )
        router = self.train(searched.best)
        tuned = self.search(
            "finetune",
            "schedule fine-tune (trained router)",
            self.settings.finetune,
            searched.best,
            lambda s: self._routed(s, router),
        )
        return searched, router, tuned

    def search(
        self, phase: str, title: str, config: SearchConfig, start: Schedule, build: Callable[[Schedule], RoutedModel]
    ) -> SearchResult:
        """The genetic search from `start` on the calibration batch; its winner is kept only if it also
        scores lower than `start` on the validation blocks."""
        done = getattr(self.phases, phase)
        if done is not None:
            return SearchResult.from_phase(done, self.settings.s_max)
        self.folder.keep_metrics(lambda r: r["phase"] != phase)
        began = time.monotonic()
        with self.progress.phase(title, config.generations) as advance:

            def record(generation: SearchGeneration) -> None:
                self.folder.append_metrics({"phase": phase, **asdict(generation)})
                advance(status=f"best KL {generation.best:.4f}")

            result = genetic_search(
                lambda s: self.calibration.kl(build(s)),
                self.space,
                start,
                config,
                self.settings.seed + SEARCH_PHASES.index(phase),
                should_stop=lambda: self.ranks.agree(self.budget.over(phase)),
                on_generation=record,
                ranks=self.ranks,
            )
        if result.best.thousandths != start.thousandths:
            result.validation = Validated(self._validation_kl(build(start)), self._validation_kl(build(result.best)))
            if result.validation.found >= result.validation.start:
                result.best, result.best_fitness = start, result.start_fitness
        setattr(self.phases, phase, result.phase(time.monotonic() - began))
        self.folder.write_state(self.state)
        return result

    def _routed(self, schedule: Schedule, router: FactorRouter) -> RoutedModel:
        return RoutedModel(self.base, schedule, self.learned, self.settings.routing_mode, router=router)

    def choose_prior(self, schedule: Schedule) -> float:
        """The attention weight of the router's starting point: the candidate best on the validation blocks.

        Candidates are scored in their order (the static order, 0, first by default) while the
        training phase's time share lasts. Recorded in run.json, so a resumed run starts from the
        same prior without scoring again.
        """
        if self.phases.prior is None:
            began = time.monotonic()
            seed = self.settings.seed
            candidates = self.settings.priors
            scores: dict[float, float] = {}
            with self.progress.phase("router prior (attention weight)", len(candidates)) as advance:
                for weight in candidates if len(candidates) > 1 else ():
                    if scores and self.ranks.agree(self.budget.over("train")):
                        break  # the training phase's share is spent: the candidates scored so far decide
                    prior = self._routed(schedule, new_router(seed, attention_weight=weight))
                    scores[weight] = self._validation_kl(prior)
                    advance(status=f"weight {weight:g}: KL {scores[weight]:.4f}")
            best = min(scores, key=lambda w: (scores[w], w)) if scores else candidates[0]
            self.phases.prior = PriorPhase(list(scores.items()), best, time.monotonic() - began)
            self.folder.write_state(self.state)
        return self._prior.attention_weight

    @property
    def _prior(self) -> PriorPhase:
        if self.phases.prior is None:
            raise ArtifactError(f"{self.folder.path / RUN_FILE} has no router prior yet")  # choose_prior sets it
        return self.phases.prior

    def train(self, schedule: Schedule) -> FactorRouter:
        """Train on `schedule` from the chosen prior; return the weights that scored best on the validation blocks.

        Validations go into run.json with the checkpoints, so a resumed run has exactly the
        validations (and best weights) its checkpoint had.
        """
        settings = self.settings.train
        weight = self.choose_prior(schedule)
        if self.phases.train is None:
            self.phases.train = TrainPhase()
        phase = self.phases.train
        seed = self.settings.seed
        trainer = RouterTrainer(
            self.base,
            schedule,
            self.training_blocks,
            settings,
            self.settings.losses,
            new_router(seed, attention_weight=weight),
            seed,
            self.ranks,
            checkpoint_activations=self.checkpoint_activations,
            spec=self.learned,
            routing_mode=self.settings.routing_mode,
            prior=new_router(seed, attention_weight=weight) if weight else None,
        )
        if phase.checkpoint is not None:
            checkpoint = phase.checkpoint
            tensors = self.ranks.from_main(lambda: self.folder.load_checkpoint(checkpoint))
            trainer.load_state_tensors(tensors, checkpoint.step)
        else:  # step 0 is the chosen prior, whose validation KL the choice already measured
            known = dict(self._prior.candidates).get(weight)
            phase.validation = [(0, trainer.validate(self._validation_kl if known is None else lambda _: known))]
        if not phase.done:
            self._train_steps(trainer, phase)
        trainer.use_best()
        return trainer.router

    def _train_steps(self, trainer: RouterTrainer, phase: TrainPhase) -> None:
        settings = self.settings.train
        self.folder.keep_metrics(lambda r: r["phase"] != "train" or r["step"] < trainer.step)
        began, seconds_before = time.monotonic(), phase.seconds
        with self.progress.phase("router training", settings.steps, completed=trainer.step) as advance:
            while trainer.step < settings.steps and not self.ranks.agree(self.budget.over("train")):
                metrics = trainer.train_step()
                self.folder.append_metrics(metrics.to_json())
                if trainer.step % settings.eval_every == 0:
                    phase.validation.append((trainer.step, trainer.validate(self._validation_kl)))
                advance(
                    status=f"loss {metrics.loss:.4f}  KL {metrics.distill:.4f}  guide w {metrics.guide_weight:.2f}  "
                    f"sparsity {metrics.hard_sparsity:.3f} (soft {metrics.soft_sparsity:.3f})  "
                    f"validation KL {phase.validation[-1][1]:.4f} (best {trainer.best_kl:.4f})"
                )
                if self.on_step is not None:
                    self.on_step(metrics)
                if trainer.step % settings.checkpoint_every == 0 and trainer.step < settings.steps:
                    phase.seconds = seconds_before + time.monotonic() - began
                    self._checkpoint(trainer, phase)
        if phase.validation[-1][0] != trainer.step:
            phase.validation.append((trainer.step, trainer.validate(self._validation_kl)))
        phase.done = True
        phase.seconds = seconds_before + time.monotonic() - began
        phase.stopped_by_time_budget = trainer.step < settings.steps
        phase.best_step = trainer.best_step
        self._checkpoint(trainer, phase)

    def _validation_kl(self, routed: RoutedModel) -> float:
        """A check of a choice (router weights, prior, schedule): the validation blocks shared over the ranks."""
        return self.validation.kl(routed, self.ranks)

    def _checkpoint(self, trainer: RouterTrainer, phase: TrainPhase) -> None:
        phase.checkpoint = self.folder.save_checkpoint(trainer.step, trainer.state_tensors())
        self.folder.write_state(self.state)
        self.folder.remove_checkpoints_except(phase.checkpoint)

    def finish(self, outcome: tuple[SearchResult, FactorRouter, SearchResult]) -> None:
        searched, router, tuned = outcome
        routed = self._routed(tuned.best, router)
        with self.progress.phase("score the held-out blocks"):
            heldout = DenseReference(self.base, self.data.heldout, self.settings.train.scored)
            self.state.heldout = heldout_scores(
                heldout,
                {
                    "static_uniform": RoutedModel(self.base, self.uniform, STATIC),
                    **self._prior_rows(),
                    "static_searched": RoutedModel(self.base, searched.best, self.static),
                    **self._attention_prior_rows(searched.best),
                    "trained": routed,
                },
            )
        artifact = RoutedArtifact.from_model(routed, self.ref, self._metadata(searched, tuned, self.state.heldout))
        with storage(self.folder.path):
            save_artifact(artifact, self.folder.path)
        write_report(self.folder.path, self.state, self.folder.read_metrics())
        self.state.finished = True
        self.folder.write_state(self.state)

    def _metadata(self, searched: SearchResult, tuned: SearchResult, heldout: dict[str, HeldoutRow]) -> TrainingRecord:
        train = self.phases.train
        if train is None or train.checkpoint is None:
            raise ArtifactError(f"{self.folder.path / RUN_FILE} has no finished training phase")
        return TrainingRecord(
            ftp_deploy_version=__version__,
            data=self.data.source,
            data_fingerprint=self.data.fingerprint,
            seq_len=self.settings.data_config.seq_len,
            seed=self.settings.seed,
            target_sparsity=self.settings.sparsity,
            steps=train.checkpoint.step,
            router_from_step=train.best_step,
            prior_attention_weight=self._prior.attention_weight,
            routing_mode=self.settings.routing_mode,
            steps_planned=self.settings.train.steps,
            stopped_by_time_budget=train.stopped_by_time_budget,
            search_kl=searched.best_fitness,
            uniform_kl=searched.start_fitness,
            finetune_kl=tuned.best_fitness,
            heldout_kl=heldout["trained"].kl,
            heldout_static_searched_kl=heldout["static_searched"].kl,
            train_seconds=train.seconds,
            settings=self.settings.to_json(),
        )
