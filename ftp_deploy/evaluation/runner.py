"""Scores every method on every task, one progress bar each, and gathers the numbers."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ftp_deploy.errors import ConfigError
from ftp_deploy.evaluation.baselines import Method
from ftp_deploy.evaluation.metrics import chance_accuracy, choice_metrics, target_metrics
from ftp_deploy.evaluation.scoring import DEFAULT_BATCH_TOKENS, Request, Scorer, encode_pair, encode_text, token_windows
from ftp_deploy.evaluation.tally import Tally
from ftp_deploy.evaluation.tasks import ChoiceTask, TargetTask, Task, TextTask, file_hashes, short_name, subset
from ftp_deploy.fidelity import SCORED_POSITIONS
from ftp_deploy.formats.eval_results import MethodResult, TaskFacts, TaskScores
from ftp_deploy.progress import Progress


@dataclass(frozen=True)
class EvalSettings:
    """Window length and scored positions for perplexity (FTP_SPEC 1b), and the batch size in tokens."""

    seq_len: int = 512
    scored_tokens: int = SCORED_POSITIONS
    batch_tokens: int = DEFAULT_BATCH_TOKENS

    def check(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"--seq-len must be at least 2 tokens, got {self.seq_len}")
        if not 1 <= self.scored_tokens < self.seq_len:
            raise ConfigError(f"--scored-tokens must be in [1, seq_len={self.seq_len}), got {self.scored_tokens}")
        if self.batch_tokens < 1:
            raise ConfigError(f"the batch size must be at least 1 token, got {self.batch_tokens}")


@dataclass
class PreparedTask:
    """A task tokenized once for all methods: requests (choice, target) or windows (text)."""

    task: Task
    requests: list[Request] = field(default_factory=list)
    windows: list[list[int]] = field(default_factory=list)
    available_windows: int = 0

    @property
    def size(self) -> int:
        return len(self.windows) if isinstance(self.task, TextTask) else len(self.requests)

    def facts(self) -> TaskFacts:
        """What was evaluated: kind, counts, chance level, sha256 of the files."""
        task, files = self.task, file_hashes(self.task)
        if isinstance(task, ChoiceTask):
            return TaskFacts("choice", files, task.available, items=len(task.items), chance=chance_accuracy(task.items))
        if isinstance(task, TargetTask):
            return TaskFacts("target", files, task.available, items=len(task.items))
        return TaskFacts("perplexity", files, self.available_windows, windows=len(self.windows))


def prepare(task: Task, tokenizer: Any, settings: EvalSettings, max_length: int) -> PreparedTask:
    if isinstance(task, ChoiceTask):
        pairs = [(item.context, choice) for item in task.items for choice in item.choices]
    elif isinstance(task, TargetTask):
        pairs = [(item.context, item.target) for item in task.items]
    else:
        windows = token_windows(encode_text(tokenizer, task.text), settings.seq_len)
        return PreparedTask(task, windows=subset(windows, task.limit), available_windows=len(windows))
    return PreparedTask(task, requests=[encode_pair(tokenizer, c, t, max_length) for c, t in pairs])


def score_task(scorer: Scorer, prepared: PreparedTask, settings: EvalSettings) -> TaskScores:
    task = prepared.task
    if isinstance(task, ChoiceTask):
        return choice_metrics(task.items, scorer.loglikelihoods(prepared.requests))
    if isinstance(task, TargetTask):
        return target_metrics(scorer.loglikelihoods(prepared.requests))
    return scorer.window_nll(prepared.windows, settings.scored_tokens).perplexities()


def evaluate_methods(
    methods: list[Method], tasks: list[PreparedTask], settings: EvalSettings, progress: Progress
) -> dict[str, MethodResult]:
    """Per method: its setup, the compute it measured (token sparsity, FLOP ratio) and each task's metrics."""
    results: dict[str, MethodResult] = {}
    for method in methods:
        tallies, per_task = [], {}
        for prepared in tasks:
            description = f"{method.name} · {short_name(prepared.task.name)}"
            with progress.phase(description, total=prepared.size) as advance:
                scorer = Scorer(method.model, Tally(), settings.batch_tokens, advance)
                metrics = score_task(scorer, prepared, settings)
            per_task[prepared.task.name] = replace(metrics, measured=scorer.tally.compute())
            tallies.append(scorer.tally)
        results[method.name] = MethodResult(**method.setup, measured=Tally.combined(tallies).compute(), tasks=per_task)
    return results
