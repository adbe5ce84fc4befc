"""Task files: every layout of ../shared/data, lm-evaluation-harness prompts, clear errors, seeded subsets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ftp_deploy.errors import DataError
from ftp_deploy.evaluation.loaders import ChoiceItem, TargetItem
from ftp_deploy.evaluation.tasks import (
    NAMED_TASKS,
    ChoiceTask,
    TargetTask,
    TextTask,
    file_hashes,
    load_task,
    parse_task_names,
    subset,
)
from tests.conftest import SHARED_DATA


def choice_items(name: str, data_dir: Path | None) -> list[ChoiceItem]:
    task = load_task(name, data_dir, None)
    assert isinstance(task, ChoiceTask)
    return task.items


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def arc_record(stem: str, texts: list[str], labels: list[str], key: str) -> dict[str, object]:
    choices = [{"text": t, "label": label} for t, label in zip(texts, labels, strict=True)]
    return {"id": "x", "question": {"stem": stem, "choices": choices}, "answerKey": key}


def test_arc_prompt_and_numeric_answer_keys(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "arc_easy/ARC-Easy-Test.jsonl",
        [
            arc_record("Which is a gas?", ["ice", "steam", "rock"], ["A", "B", "C"], "B"),
            arc_record("Pick three.", ["one", "two", "three", "four"], ["1", "2", "3", "4"], "3"),
        ],
    )
    assert choice_items("arc_easy", tmp_path) == [
        ChoiceItem("Question: Which is a gas?\nAnswer:", (" ice", " steam", " rock"), 1),
        ChoiceItem("Question: Pick three.\nAnswer:", (" one", " two", " three", " four"), 2),
    ]


def test_piqa_labels_come_from_their_own_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "piqa/valid.jsonl", [{"goal": "Open a jar", "sol1": "twist", "sol2": "pull"}])
    (tmp_path / "piqa/valid-labels.lst").write_text("1\n")
    assert choice_items("piqa", tmp_path) == [ChoiceItem("Question: Open a jar\nAnswer:", (" twist", " pull"), 1)]
    (tmp_path / "piqa/valid-labels.lst").write_text("1\n0\n")
    with pytest.raises(DataError, match=r"valid-labels.lst has 2 labels but .*valid.jsonl has 1 items"):
        load_task("piqa", tmp_path, None)


def test_boolq_string_labels_and_prompt(tmp_path: Path) -> None:
    records = [
        {"question": "is it wet", "passage": "Rain -- Water falls.", "idx": 0, "label": "true"},
        {"question": "is it dry", "passage": "Sea -- Salt water.", "idx": 1, "label": "false"},
    ]
    write_jsonl(tmp_path / "boolq/val.jsonl", records)
    assert choice_items("boolq", tmp_path) == [
        ChoiceItem("Rain -- Water falls.\nQuestion: is it wet?\nAnswer:", (" no", " yes"), 1),
        ChoiceItem("Sea -- Salt water.\nQuestion: is it dry?\nAnswer:", (" no", " yes"), 0),
    ]


def test_openbookqa_tsv_choices_column(tmp_path: Path) -> None:
    path = tmp_path / "openbookqa/test.tsv"
    path.parent.mkdir()
    header = "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
    row = "7-1\tFog is likely around:\t(A) a marsh (B) a tundra (C) the plains (D) a desert\tFog...\tA\n"
    path.write_text(header + row)
    expected = ChoiceItem("Fog is likely around:", (" a marsh", " a tundra", " the plains", " a desert"), 0)
    assert choice_items("openbookqa", tmp_path) == [expected]
    path.write_text(header + row + "7-2\tBroken\tno choices here\tx\tB\n")
    with pytest.raises(DataError, match=r"test.tsv:3: choices are not in the form"):
        load_task("openbookqa", tmp_path, None)


def test_lambada_context_and_last_word(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "lambada/lambada_test.jsonl", [{"text": "He opened the door and saw\n\nhis dog"}])
    task = load_task("lambada", tmp_path, None)
    assert isinstance(task, TargetTask)
    assert task.items == [TargetItem("He opened the door and saw\n\nhis", " dog")]


def test_text_files_read_crlf_as_lf(tmp_path: Path) -> None:
    path = tmp_path / "wikitext2/wiki.test.raw"
    path.parent.mkdir()
    path.write_bytes(b" = Title = \r\n Some text . \r\n")
    task = load_task("wikitext2", tmp_path, 3)
    assert isinstance(task, TextTask)
    assert (task.text, task.limit) == (" = Title = \n Some text . \n", 3)


def test_generic_multiple_choice_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mine.jsonl", [{"context": "2+2=", "choices": ["4", "5"], "label": 0}])
    assert choice_items(f"mc:{path}", None) == [ChoiceItem("2+2=", ("4", "5"), 0)]
    task = load_task(f"mc:{path}", None, None)
    assert file_hashes(task) == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"context": "a", "choices": ["x", "y"]}', r"mc.jsonl:2: field 'label' is missing or not a int"),
        ('{"context": "a", "choices": ["x", "y"], "label": true}', r"mc.jsonl:2: field 'label'"),
        ('{"context": "a", "choices": ["x", "y"], "label": 2}', r"mc.jsonl:2: label 2 is not an index"),
        ('{"context": "a", "choices": ["x"], "label": 0}', r"mc.jsonl:2: choices must be a list of at least two"),
        ("not json", r"mc.jsonl:2: not valid JSON"),
        ("[1, 2]", r"mc.jsonl:2: expected a JSON object"),
    ],
)
def test_wrong_layout_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text('{"context": "a", "choices": ["x", "y"], "label": 1}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        load_task(f"mc:{path}", None, None)


def test_named_task_in_a_wrong_layout(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "boolq/val.jsonl", [{"question": "q", "passage": "p", "label": True}, {"question": "q"}])
    with pytest.raises(DataError, match=r"val.jsonl:2: label None is not"):
        load_task("boolq", tmp_path, None)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"task arc_challenge: file not found: .*ARC-Challenge-Test.jsonl"):
        load_task("arc_challenge", tmp_path, None)
    with pytest.raises(DataError, match=r"file not found: .*nowhere.txt"):
        load_task(f"ppl:{tmp_path / 'nowhere.txt'}", None, None)


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(DataError) as caught:
        parse_task_names("arc_easy, hellaswag")
    message = str(caught.value)
    assert "'hellaswag'" in message
    assert all(name in message for name in NAMED_TASKS)
    assert "mc:PATH" in message and "ppl:PATH" in message
    assert parse_task_names("piqa,mc:x.jsonl, piqa") == ["piqa", "mc:x.jsonl"]
    with pytest.raises(DataError, match="unknown task 'mc:'"):
        parse_task_names("mc:")


def test_limit_zero_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mc.jsonl", [{"context": "a", "choices": ["x", "y"], "label": 1}])
    with pytest.raises(DataError, match="--limit must be at least 1 item, got 0"):
        load_task(f"mc:{path}", None, 0)


def test_subset_is_fixed_seeded_and_in_file_order() -> None:
    items = list(range(100))
    chosen = subset(items, 10)
    assert chosen == subset(items, 10) == sorted(chosen)
    assert chosen != items[:10]
    assert subset(items, 10, seed=1) != chosen
    assert subset(items, 500) == items


SOURCES = {  # records and sha256 as listed in ../shared/data/SOURCES.md
    "arc_easy": (2376, "ce32a0774b4beb1977d2c6b16dda5dd2b24fdc9c7f506882c452678676bd09be"),
    "arc_challenge": (1172, "9fa8ffb3e3a1f88cb302d53dd95aae81e39209ad9bcf974376b319d8fd35717c"),
    "piqa": (1838, "93503cc97c679e459b065c3d13e848282e44b2a25213985bed3e5d458abef72d"),
    "boolq": (3270, "21acbfbd1e7908fddd9e626bc2a6101c5a5430bda3fbf74985b979af7a63b989"),
    "openbookqa": (500, "30b94f7cc2fa216455cc6e04bc4d5ef7d634eeb4f5c7b5f6b018914e78e0b0ff"),
    "lambada": (5153, "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226"),
}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the development data folder {SHARED_DATA} is absent")
@pytest.mark.parametrize("name", list(SOURCES))
def test_shared_data_files_load_whole(name: str) -> None:
    task = load_task(name, SHARED_DATA, None)
    records, sha256 = SOURCES[name]
    assert isinstance(task, ChoiceTask | TargetTask)
    assert task.available == len(task.items) == records
    assert sha256 in file_hashes(task).values()
