"""The house rules of docs/design.md's map, read from the source: who may import whom, one home per name.

Every module of the installed package is parsed (the package-dir mapping applied: exporters/ is
ftp_deploy.exporters), imports inside functions included, so a lazy import breaks a rule too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftp_deploy.formats.export_manifest import MANIFEST_FILE
from ftp_deploy.formats.plan_manifest import PLAN_MANIFEST_FILE
from ftp_deploy.formats.record import REPORT_MD
from ftp_deploy.formats.routed_config import CONFIG_FILE, ROUTER_FILE
from ftp_deploy.formats.run_state import METRICS_FILE, RUN_FILE
from ftp_deploy.formats.verify_report import INPUTS, REPORT_JSON
from ftp_deploy.placement import DTYPE_NAMES
from tests.test_cli import heavy_modules_after

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {
    "ftp_deploy": "ftp_deploy",
    "exporters": "ftp_deploy.exporters",
    "plugins": "ftp_deploy.plugins",
    "engines": "ftp_deploy.engines",
}
STAGE_PACKAGES = tuple(
    f"ftp_deploy.{name}"
    for name in ("training", "evaluation", "exporters", "verification", "generation", "serving", "engines", "research")
)
# (importer, imported, why not): the stage that runs first never reaches into a later one.
FORBIDDEN = [
    ("ftp_deploy.exporters", "ftp_deploy.verification", "export validates with ftp_deploy.comparison"),
    ("ftp_deploy.training", "ftp_deploy.evaluation", "statistics live in ftp_deploy.stats"),
    *[("ftp_deploy.formats", stage, "the formats are the bottom layer") for stage in STAGE_PACKAGES],
    # It may use generation's section-9 reference: the decode it compares against.
    *[
        ("ftp_deploy.comparison", stage, "both export and verify use it")
        for stage in STAGE_PACKAGES
        if stage not in ("ftp_deploy.generation", "ftp_deploy.engines")
    ],
]
# Modules that read JSON that is not a stage document: data files, the training log, Triton's messages.
JSON_READERS = {
    "ftp_deploy.fileio": "the one reader of the formats' documents",
    "ftp_deploy.evaluation.loaders": "task files, JSON lines",
    "ftp_deploy.training.data": "training text, JSON lines",
    "ftp_deploy.training.runfolder": f"{METRICS_FILE}, the training log",
    "ftp_deploy.serving.command": "the server's HTTP answers",
    "ftp_deploy.serving.model": "Triton's model config and request parameters",
    "ftp_deploy.serving.server": "the serving environment's self-description",
}
DOCUMENT_FILES = {MANIFEST_FILE, PLAN_MANIFEST_FILE, REPORT_MD, CONFIG_FILE, ROUTER_FILE, RUN_FILE, METRICS_FILE}
DOCUMENT_FILES |= {REPORT_JSON, INPUTS, "results.json"}
# What a user leaves unsaid (DEFAULT_DEVICE, DEFAULT_DTYPE); a resolved "cpu" is a value, not a default.
UNRESOLVED = ("auto", *DTYPE_NAMES)


def modules() -> Iterator[tuple[str, ast.Module]]:
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [part for part in path.relative_to(ROOT / folder).with_suffix("").parts if part != "__init__"]
            yield ".".join([package, *parts]), ast.parse(path.read_text(encoding="utf-8"))


MODULES = dict(modules())


def inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imported(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_the_walk_sees_the_whole_package() -> None:
    assert {"ftp_deploy.cli", "ftp_deploy.exporters.stage", "ftp_deploy.engines.onnx_runtime"} <= set(MODULES)
    assert "ftp_deploy.formats.record" in MODULES and len(MODULES) > 100


@pytest.mark.parametrize(("importer", "target", "why"), FORBIDDEN, ids=lambda v: str(v).replace("ftp_deploy.", ""))
def test_no_stage_imports_against_the_pipeline(importer: str, target: str, why: str) -> None:
    found = [
        f"{name} imports {module}"
        for name, tree in MODULES.items()
        if inside(name, importer)
        for module in imported(tree)
        if inside(module, target)
    ]
    assert found == [], why


def test_research_code_is_reached_by_no_command() -> None:
    """ftp_deploy.research and its extra's cmaes stay out of what the commands import."""
    found = [
        f"{name} imports {module}"
        for name, tree in MODULES.items()
        if not inside(name, "ftp_deploy.research")
        for module in imported(tree)
        if inside(module, "ftp_deploy.research") or inside(module, "cmaes")
    ]
    assert found == []


def test_only_the_formats_parse_stage_documents() -> None:
    readers = {
        name
        for name, tree in MODULES.items()
        if not inside(name, "ftp_deploy.formats")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("load", "loads")
        if isinstance(node.value, ast.Name) and node.value.id == "json"
    }
    assert readers == set(JSON_READERS)


def test_document_file_names_are_declared_in_the_formats_alone() -> None:
    found = [
        f"{name}:{node.lineno} {node.value!r}"
        for name, tree in MODULES.items()
        if not inside(name, "ftp_deploy.formats")
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in DOCUMENT_FILES
    ]
    assert found == []


def defaults_of(function: ast.FunctionDef) -> Iterator[tuple[str, ast.expr]]:
    positional = function.args.posonlyargs + function.args.args
    with_default = positional[len(positional) - len(function.args.defaults) :]
    yield from ((a.arg, d) for a, d in zip(with_default, function.args.defaults, strict=True))
    yield from ((a.arg, d) for a, d in zip(function.args.kwonlyargs, function.args.kw_defaults, strict=True) if d)


def unresolved_default(name: str, value: ast.expr | None) -> bool:
    return name in ("device", "dtype") and isinstance(value, ast.Constant) and value.value in UNRESOLVED


def test_one_vocabulary_of_dtypes_and_one_device_default() -> None:
    """The dtype names are placement's tuple; `device` and `dtype` default to its constants, never to literals."""
    tuples, defaults = [], []
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple | ast.List) and set(DTYPE_NAMES) <= {
                e.value for e in node.elts if isinstance(e, ast.Constant)
            }:
                tuples.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.FunctionDef):
                defaults += [f"{name}.{node.name}({arg})" for arg, d in defaults_of(node) if unresolved_default(arg, d)]
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and unresolved_default(node.target.id, node.value)
            ):
                defaults.append(f"{name}:{node.lineno} {node.target.id}")
    assert tuples == ["ftp_deploy.placement:" + str(placement_line())]
    assert defaults == []


def placement_line() -> int:
    tree = MODULES["ftp_deploy.placement"]
    assigns = [n for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.AnnAssign)]
    target = next(n for n in assigns if "DTYPE_NAMES" in ast.unparse(n).split("=")[0])
    return target.value.lineno if target.value is not None else target.lineno


def test_the_formats_and_the_options_load_without_torch() -> None:
    """The documents and every command's options are readable on a machine without the heavy stack."""
    light = sorted(
        name
        for name in MODULES
        if inside(name, "ftp_deploy.formats") or name.endswith(".options") or name == "ftp_deploy.placement"
    )
    assert len(light) > 10
    assert heavy_modules_after("\n".join(f"import {name}" for name in light)) == []


def test_the_map_in_the_design_doc_matches_the_tree() -> None:
    """docs/design.md's "Where things go": every folder and package in its table, every core module named."""
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = design.split("## Where things go", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("`")[1]: line for line in section.splitlines() if line.startswith("| `")}
    packages = {f"ftp_deploy/{p.parent.name}/" for p in (ROOT / "ftp_deploy").glob("*/__init__.py")}
    folders = {f"{folder}/" for folder in PACKAGE_DIRS if folder != "ftp_deploy"} | {"benchmarks/", "tests/"}
    assert set(rows) == packages | folders | {"ftp_deploy/*.py"}
    core = {p.stem for p in (ROOT / "ftp_deploy").glob("*.py")}
    named = {word.strip("`,();") for word in rows["ftp_deploy/*.py"].split()}
    assert core - named == set()
