"""Parsers for the task file layouts of ../shared/data/SOURCES.md, with lm-evaluation-harness prompts.

Every malformed record is reported as a DataError naming the file and the line.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftp_deploy.errors import DataError


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice item: each choice is scored as a continuation of `context`."""

    context: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class TargetItem:
    """A context and the one continuation that should follow it (LAMBADA)."""

    context: str
    target: str


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            yield number, line


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, found {type(record).__name__}")
        yield number, record


def _field(record: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = record.get(key)
    # JSON true/false arrive as bool, which Python counts as an int.
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise DataError(f"{where}: field {key!r} is missing or not a {kind.__name__}")
    return value


def _non_empty(items: list[Any], path: Path) -> list[Any]:
    if not items:
        raise DataError(f"{path} holds no items")
    return items


def _answer_index(labels: list[str], key: str, where: str) -> int:
    if key not in labels:
        raise DataError(f"{where}: answer key {key!r} is not one of the choice labels {labels}")
    return labels.index(key)


def load_arc(path: Path) -> list[ChoiceItem]:
    """Official ARC jsonl; some answer keys are digits, so the key is mapped through the choice labels."""
    items = []
    for number, record in _jsonl(path):
        where = f"{path}:{number}"
        question = _field(record, "question", dict, where)
        choices = _field(question, "choices", list, where)
        if not all(isinstance(c, dict) for c in choices):
            raise DataError(f"{where}: question.choices must be a list of objects")
        texts = [_field(c, "text", str, where) for c in choices]
        labels = [_field(c, "label", str, where) for c in choices]
        label = _answer_index(labels, _field(record, "answerKey", str, where), where)
        stem = _field(question, "stem", str, where)
        items.append(ChoiceItem(f"Question: {stem}\nAnswer:", tuple(f" {t}" for t in texts), label))
    return _non_empty(items, path)


def load_piqa(path: Path, labels_path: Path) -> list[ChoiceItem]:
    records = list(_jsonl(path))
    labels = list(_lines(labels_path))
    if len(labels) != len(records):
        raise DataError(f"{labels_path} has {len(labels)} labels but {path} has {len(records)} items")
    items = []
    for (number, record), (label_line, label) in zip(records, labels, strict=True):
        where = f"{path}:{number}"
        if label.strip() not in ("0", "1"):
            raise DataError(f"{labels_path}:{label_line}: label {label.strip()!r} is not 0 or 1")
        solutions = tuple(f" {_field(record, key, str, where)}" for key in ("sol1", "sol2"))
        goal = _field(record, "goal", str, where)
        items.append(ChoiceItem(f"Question: {goal}\nAnswer:", solutions, int(label)))
    return _non_empty(items, path)


def load_boolq(path: Path) -> list[ChoiceItem]:
    """SuperGLUE BoolQ: `label` is the string "true" or "false"; choices " no" / " yes"."""
    items = []
    for number, record in _jsonl(path):
        where = f"{path}:{number}"
        label = record.get("label")
        if label not in ("true", "false", True, False):
            raise DataError(f'{where}: label {label!r} is not "true" or "false"')
        passage = _field(record, "passage", str, where)
        question = _field(record, "question", str, where)
        context = f"{passage}\nQuestion: {question}?\nAnswer:"
        items.append(ChoiceItem(context, (" no", " yes"), int(label in ("true", True))))
    return _non_empty(items, path)


_OBQA_COLUMNS = ("Question Stem", "Choices", "Answer Key")
_OBQA_CHOICE = re.compile(r"(?:^|\s)\(([A-Z])\)\s")


def load_openbookqa(path: Path) -> list[ChoiceItem]:
    """Official OpenBookQA TSV: choices as one "(A) .. (B) .." column; the stem alone is the context."""
    rows = csv.reader(read_text(path).splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows, [])
    missing = [c for c in _OBQA_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
    stem_at, choices_at, key_at = (header.index(c) for c in _OBQA_COLUMNS)
    items = []
    for number, row in enumerate(rows, start=2):
        where = f"{path}:{number}"
        if len(row) != len(header):
            raise DataError(f"{where}: {len(row)} columns, the header has {len(header)}")
        parts = _OBQA_CHOICE.split(row[choices_at])
        labels, texts = parts[1::2], [t.strip() for t in parts[2::2]]
        if parts[0].strip() or len(labels) < 2 or not all(texts):
            raise DataError(f'{where}: choices are not in the form "(A) text (B) text ..."')
        label = _answer_index(labels, row[key_at].strip(), where)
        items.append(ChoiceItem(row[stem_at], tuple(f" {t}" for t in texts), label))
    return _non_empty(items, path)


def load_lambada(path: Path) -> list[TargetItem]:
    """Context is the text without its last word; the target is a space and that word."""
    items = []
    for number, record in _jsonl(path):
        text = _field(record, "text", str, f"{path}:{number}")
        context, space, word = text.rpartition(" ")
        if not space or not context or not word:
            raise DataError(f"{path}:{number}: text needs a context and a last word after a space")
        items.append(TargetItem(context, f" {word}"))
    return _non_empty(items, path)


def load_choice_jsonl(path: Path) -> list[ChoiceItem]:
    """Generic `mc:` file: {"context": str, "choices": [str, ...], "label": int} a line, scored verbatim."""
    items = []
    for number, record in _jsonl(path):
        where = f"{path}:{number}"
        context = _field(record, "context", str, where)
        choices = _field(record, "choices", list, where)
        if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise DataError(f"{where}: choices must be a list of at least two non-empty strings")
        label = _field(record, "label", int, where)
        if not 0 <= label < len(choices):
            raise DataError(f"{where}: label {label} is not an index into the {len(choices)} choices")
        items.append(ChoiceItem(context, tuple(choices), label))
    return _non_empty(items, path)


def load_plain_text(path: Path) -> str:
    """A text for perplexity, with CRLF line ends (WikiText-2's copy) read as LF."""
    text = read_text(path).replace("\r\n", "\n")
    if not text.strip():
        raise DataError(f"{path} holds no text")
    return text
