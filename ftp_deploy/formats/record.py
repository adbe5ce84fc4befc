"""One JSON serde for every record the stages hand each other: dataclasses to plain JSON and back.

`to_json(record)` writes a dataclass as the JSON it reads back from: nested dataclasses as objects,
tuples as lists, everything else as it is. `from_json(cls, data)` builds `cls` from such JSON by its
field types (nested dataclasses, `tuple[X, ...]`, `list[X]`, `dict[str, X]`, `X | None`, scalars),
so a record declares its fields once and has no hand-written reader. A missing field without a
default, or a value of the wrong kind, raises KeyError / TypeError / ValueError, which the document
readers turn into one line naming the file (`Document.read`).

`Document` adds what a file needs: its name, its format string and version, an atomic write and
a reader that refuses another format or version in one line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

from ftp_deploy.fileio import atomic_write_json, read_versioned_json

# Each stage's record has a human-readable report.md beside it (train, eval, verify).
REPORT_MD = "report.md"

R = TypeVar("R")
D = TypeVar("D", bound="Document")


def to_json(record: Any) -> Any:
    """A dataclass (or a value inside one) as plain JSON: objects, lists, numbers, strings, null."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_json(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, (tuple, list)):
        return [to_json(item) for item in record]
    if isinstance(record, dict):
        return {str(key): to_json(value) for key, value in record.items()}
    return record


def from_json(cls: type[R], data: Any) -> R:
    """`cls` (a dataclass) built from `to_json`'s output; unknown keys are ignored, so newer readers of
    older files see their defaults for fields added since."""
    return typing.cast(R, _value(cls, data))


def _value(kind: Any, data: Any) -> Any:
    if kind is Any or kind is typing.Any:
        return data
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = typing.get_args(kind)
        if data is None and type(None) in options:
            return None
        present = [o for o in options if o is not type(None)]
        if len(present) == 1:  # X | None: X's own error says what is wrong
            return _value(present[0], data)
        last_error: Exception | None = None
        for option in present:
            try:
                return _value(option, data)
            except (KeyError, TypeError, ValueError) as err:
                last_error = err
        raise TypeError(f"{data!r} is none of {kind}") from last_error
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(data, dict):
            raise TypeError(f"{kind.__name__} needs an object, got {type(data).__name__}")
        hints = typing.get_type_hints(kind)
        values = {}
        for f in dataclasses.fields(kind):
            if not f.init:
                continue
            if f.name in data:
                values[f.name] = _value(hints[f.name], data[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(f.name)
        return kind(**values)
    if origin is tuple:
        args = typing.get_args(kind)
        items = _items(data, kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], item) for item in items)
        if len(args) != len(items):
            raise ValueError(f"{kind} needs {len(args)} items, got {len(items)}")
        return tuple(_value(arg, item) for arg, item in zip(args, items, strict=True))
    if origin is list:
        (item_kind,) = typing.get_args(kind) or (Any,)
        return [_value(item_kind, item) for item in _items(data, kind)]
    if origin is dict:
        key_kind, value_kind = typing.get_args(kind) or (str, Any)
        if not isinstance(data, dict):
            raise TypeError(f"{kind} needs an object, got {type(data).__name__}")
        return {_key(key_kind, key): _value(value_kind, value) for key, value in data.items()}
    if kind is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise TypeError(f"a number is needed, got {data!r}")
        return float(data)
    if kind in (int, str, bool):
        if not isinstance(data, kind) or (kind is int and isinstance(data, bool)):
            raise TypeError(f"{kind.__name__} needed, got {data!r}")
        return data
    if kind is type(None):
        if data is not None:
            raise TypeError(f"null needed, got {data!r}")
        return None
    raise TypeError(f"no JSON reading for the field type {kind!r}")


def _key(kind: Any, key: Any) -> Any:
    """JSON object keys are strings: an int-keyed dict (lengths, steps) reads its keys back as ints."""
    if kind is int and isinstance(key, str):
        try:
            return int(key)
        except ValueError as err:
            raise ValueError(f"an integer key is needed, got {key!r}") from err
    return _value(kind, key)


def _items(data: Any, kind: Any) -> list[Any]:
    if not isinstance(data, (list, tuple)):
        raise TypeError(f"{kind} needs a list, got {type(data).__name__}")
    return list(data)


class Document:
    """A record written as one JSON file of its own: `FILE` in a folder, tagged `FORMAT` and `VERSION`.

    Subclasses are dataclasses; `describe` names the document in errors ("an ftp-deploy export
    manifest") and `missing` says what a folder without the file is.
    """

    FILE: ClassVar[str]
    FORMAT: ClassVar[str]
    VERSION: ClassVar[int]
    DESCRIPTION: ClassVar[str]

    def write(self, folder: Path) -> Path:
        """Atomically, with the format header first."""
        path = folder / self.FILE
        atomic_write_json(path, {"format": self.FORMAT, "format_version": self.VERSION, **to_json(self)})
        return path

    @classmethod
    def read(cls: type[D], folder: Path, missing: str | None = None) -> D:
        """The document in `folder`; ArtifactError in one line for a missing, foreign or other-version file."""
        return read_versioned_json(
            folder / cls.FILE,
            cls.FORMAT,
            cls.VERSION,
            cls.DESCRIPTION,
            missing or f"{folder} holds no {cls.FILE}",
            lambda data: from_json(cls, cls.upgrade({k: v for k, v in data.items() if k not in _HEADER})),
        )

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The JSON of a file written by an earlier ftp-deploy of the same format version, as this one
        writes it; a document whose layout changed within its version says how here."""
        return data


_HEADER = ("format", "format_version")
