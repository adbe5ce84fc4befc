"""Saving and loading a routed model: `ftp_config.json` (formats/routed_config) + `router.safetensors`, no pickle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ftp_deploy.errors import ArtifactError, BaseModelMismatchError, ConfigError
from ftp_deploy.fileio import atomic_write_bytes, sha256_file
from ftp_deploy.formats.record import to_json
from ftp_deploy.formats.routed_config import (
    CONFIG_FILE,
    FACTOR_NAMES,
    ROUTER_FILE,
    ModelRef,
    RoutedConfig,
    RouterRecord,
    RouterSpec,
    ScheduleRecord,
    TrainingRecord,
)
from ftp_deploy.models import LoadedModel, load_base_model, model_ref_for
from ftp_deploy.placement import CPU, Placement
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import FactorRouter
from ftp_deploy.schedule import Schedule

FACTOR_DEFINITIONS = {
    "position": "t / (T - 1) over the valid tokens",
    "attention_score": (
        "mean attention received from the last `attention_window` valid queries in the most recent "
        "block that computed the token, times the query's visible-key count (1 = uniform); 1 before block 0"
    ),
    "attention_rank": "rank of attention_score among the valid tokens, scaled to [0, 1]",
    "required_sparsity": "the block's scheduled sparsity s_l",
}


@dataclass
class RoutedArtifact:
    """Everything a routed model is, apart from the frozen base model it applies to."""

    base: ModelRef
    schedule: Schedule
    router_spec: RouterSpec
    routing_mode: str = "topk"
    router_state: dict[str, torch.Tensor] | None = None
    training: TrainingRecord | None = None

    def router_record(self) -> RouterRecord:
        """The router as the files describe it: its spec and its parameter count."""
        parameters = sum(t.numel() for t in self.router_state.values()) if self.router_state else 0
        return RouterRecord(**to_json(self.router_spec), parameters=parameters)

    @property
    def has_trained_router(self) -> bool:
        return self.router_spec.kind == "learned" and self.router_state is not None

    def build(self, base_model: torch.nn.Module) -> RoutedModel:
        """A RoutedModel over `base_model`, after checking it is the model this was made for."""
        check_base_model(self.base, model_ref_for(base_model, self.base.ref))
        routed = RoutedModel(base_model, self.schedule, self.router_spec, self.routing_mode)
        if routed.router is not None and self.router_state is not None:
            routed.router.load_state_dict(self.router_state)
        return routed

    @classmethod
    def from_model(cls, routed: RoutedModel, base: ModelRef, training: TrainingRecord | None = None) -> RoutedArtifact:
        state = None
        if routed.router is not None:
            state = {name: t.detach().cpu().contiguous() for name, t in routed.router.state_dict().items()}
        return cls(base, routed.schedule, routed.router_spec, routed.routing_mode, state, training)


def check_base_model(expected: ModelRef, actual: ModelRef) -> None:
    problems = []
    if expected.num_layers != actual.num_layers:
        problems.append(f"{actual.num_layers} layers, not {expected.num_layers}")
    if expected.hidden_size != actual.hidden_size:
        problems.append(f"hidden size {actual.hidden_size}, not {expected.hidden_size}")
    if not problems and expected.config_hash != actual.config_hash:
        problems.append("a different architecture config (hash mismatch)")
    if problems:
        raise BaseModelMismatchError(
            f"this router was made for {expected.ref!r}, but the model given ({actual.ref!r}) has "
            + "; ".join(problems)
        )


def save_artifact(artifact: RoutedArtifact, folder: Path) -> None:
    """Write the router first, then the config that names its hash: a partial save never loads."""
    files: dict[str, str] = {}
    if artifact.router_state is not None:
        atomic_write_bytes(folder / ROUTER_FILE, save_safetensors(artifact.router_state))
        files[ROUTER_FILE] = sha256_file(folder / ROUTER_FILE)
    RoutedConfig(
        base_model=artifact.base,
        schedule=ScheduleRecord(
            artifact.schedule.thousandths,
            tuple(artifact.schedule.sparsities),
            artifact.schedule.s_max,
            artifact.schedule.mean(),
        ),
        router=artifact.router_record(),
        routing_mode=artifact.routing_mode,
        training=artifact.training,
        factors={name: FACTOR_DEFINITIONS[name] for name in FACTOR_NAMES},
        files=files,
    ).write(folder)


def load_artifact(folder: Path) -> RoutedArtifact:
    if not folder.is_dir():
        raise ArtifactError(f"run folder not found: {folder}")
    config = RoutedConfig.read(folder, f"{folder} is not a routed-model folder: {CONFIG_FILE} is missing")
    try:
        schedule = Schedule(config.schedule.sparsity_thousandths, config.schedule.s_max)
        schedule.check_layers(config.base_model.num_layers)
    except ConfigError as err:
        raise ArtifactError(f"{folder / CONFIG_FILE}: {err}") from err
    spec = config.router.spec
    state = _load_router_state(folder, config.files.get(ROUTER_FILE), spec.hidden) if spec.kind == "learned" else None
    return RoutedArtifact(config.base_model, schedule, spec, config.routing_mode, state, config.training)


def _load_router_state(folder: Path, expected_hash: str | None, hidden: int) -> dict[str, torch.Tensor] | None:
    path = folder / ROUTER_FILE
    if expected_hash is None:
        return None
    if not path.is_file():
        raise ArtifactError(f"{path} is missing (the config says the router was saved)")
    if sha256_file(path) != expected_hash:
        raise ArtifactError(f"{path} is corrupt or truncated: its sha256 does not match {CONFIG_FILE}")
    try:
        state = load_safetensors(path.read_bytes())
    except SafetensorError as err:
        raise ArtifactError(f"{path} could not be read: {err}") from err
    expected = FactorRouter(hidden).state_dict()
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    if shapes != {name: tuple(t.shape) for name, t in expected.items()}:
        raise ArtifactError(f"{path} does not hold a factor router of hidden size {hidden} (found {shapes})")
    return state


def load_routed(
    run: Path | RoutedArtifact,
    model: str | None = None,
    placement: Placement = CPU,
    trust_remote_code: bool = False,
) -> tuple[RoutedModel, LoadedModel, RoutedArtifact]:
    """A run folder (or its loaded artifact) over the base model it names (or `model`, checked to match).

    The one path from a run folder to a RoutedModel: run, eval, export and verify all load through it.
    """
    artifact = run if isinstance(run, RoutedArtifact) else load_artifact(run)
    loaded = load_base_model(model or artifact.base.ref, placement, trust_remote_code=trust_remote_code)
    return artifact.build(loaded.model), loaded, artifact
