"""The tasks `ftp-deploy eval` knows, where their files live, and the seeded --limit subset."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ftp_deploy.data_root import DATA_ENV
from ftp_deploy.errors import DataError
from ftp_deploy.evaluation import loaders
from ftp_deploy.evaluation.loaders import ChoiceItem, TargetItem
from ftp_deploy.fileio import sha256_file

SUBSET_SEED = 0
CHOICE_PREFIX = "mc:"
TEXT_PREFIX = "ppl:"
DEFAULT_TASKS = "wikitext2,arc_easy,arc_challenge,piqa,boolq,openbookqa"
GENERIC_TASKS = f"{CHOICE_PREFIX}PATH (multiple-choice jsonl), {TEXT_PREFIX}PATH (text for perplexity)"

T = TypeVar("T")


@dataclass
class ChoiceTask:
    name: str
    files: tuple[Path, ...]
    items: list[ChoiceItem]
    available: int


@dataclass
class TargetTask:
    name: str
    files: tuple[Path, ...]
    items: list[TargetItem]
    available: int


@dataclass
class TextTask:
    """A text scored in --seq-len windows; --limit picks windows, so it applies after tokenizing."""

    name: str
    files: tuple[Path, ...]
    text: str
    limit: int | None


Task = ChoiceTask | TargetTask | TextTask
TaskBuilder = Callable[[str, tuple[Path, ...], int | None], Task]


def subset(items: Sequence[T], limit: int | None, seed: int = SUBSET_SEED) -> list[T]:
    """A fixed, seeded choice of `limit` items in their file order; all items when limit is None."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1 item, got {limit}")


def _choice(load: Callable[..., list[ChoiceItem]]) -> TaskBuilder:
    def build(name: str, files: tuple[Path, ...], limit: int | None) -> Task:
        items = load(*files)
        return ChoiceTask(name, files, subset(items, limit), len(items))

    return build


def _target(load: Callable[[Path], list[TargetItem]]) -> TaskBuilder:
    def build(name: str, files: tuple[Path, ...], limit: int | None) -> Task:
        items = load(files[0])
        return TargetTask(name, files, subset(items, limit), len(items))

    return build


def _text(name: str, files: tuple[Path, ...], limit: int | None) -> Task:
    return TextTask(name, files, loaders.load_plain_text(files[0]), limit)


# Paths relative to --data-dir, as ../shared/data/SOURCES.md lays them out.
NAMED_TASKS: dict[str, tuple[tuple[str, ...], TaskBuilder]] = {
    "wikitext2": (("wikitext2/wiki.test.raw",), _text),
    "lambada": (("lambada/lambada_test.jsonl",), _target(loaders.load_lambada)),
    "arc_easy": (("arc_easy/ARC-Easy-Test.jsonl",), _choice(loaders.load_arc)),
    "arc_challenge": (("arc_challenge/ARC-Challenge-Test.jsonl",), _choice(loaders.load_arc)),
    "piqa": (("piqa/valid.jsonl", "piqa/valid-labels.lst"), _choice(loaders.load_piqa)),
    "boolq": (("boolq/val.jsonl",), _choice(loaders.load_boolq)),
    "openbookqa": (("openbookqa/test.tsv",), _choice(loaders.load_openbookqa)),
}


def parse_task_names(text: str) -> list[str]:
    """Comma-separated task names, checked and without repeats."""
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise DataError("no tasks given")
    for name in names:
        generic = name.startswith((CHOICE_PREFIX, TEXT_PREFIX)) and name.partition(":")[2]
        if name not in NAMED_TASKS and not generic:
            raise DataError(f"unknown task {name!r}; known tasks: {', '.join(NAMED_TASKS)}, {GENERIC_TASKS}")
    return names


def short_name(name: str) -> str:
    """`mc:` and `ppl:` tasks by their file name, so a long path does not swamp a table."""
    prefix, colon, path = name.partition(":")
    return f"{prefix}:{Path(path).name}" if colon else name


def task_files(name: str, data_dir: Path | None) -> tuple[Path, ...]:
    """The files a task reads; each must exist."""
    files: tuple[Path, ...]
    if name.startswith((CHOICE_PREFIX, TEXT_PREFIX)):
        files = (Path(name.partition(":")[2]).expanduser(),)
    else:
        if data_dir is None:
            raise DataError(f"task {name} needs --data-dir or {DATA_ENV} (no ../shared/data next to the repository)")
        if not data_dir.is_dir():
            raise DataError(f"data folder not found: {data_dir}")
        files = tuple(data_dir / relative for relative in NAMED_TASKS[name][0])
    for path in files:
        if not path.is_file():
            raise DataError(f"task {name}: file not found: {path}")
    return files


def load_task(name: str, data_dir: Path | None, limit: int | None) -> Task:
    check_limit(limit)
    files = task_files(name, data_dir)
    if name.startswith(CHOICE_PREFIX):
        return _choice(loaders.load_choice_jsonl)(name, files, limit)
    if name.startswith(TEXT_PREFIX):
        return _text(name, files, limit)
    return NAMED_TASKS[name][1](name, files, limit)


def file_hashes(task: Task) -> dict[str, str]:
    return {str(path): sha256_file(path) for path in task.files}
