"""`ftp-deploy export` as one library call: the options checked, the ONNX (or TensorRT) export, the Triton repository.

from ftp_deploy.exporters.stage import export
result = export(run_dir, out, with_past=True)          # the same names as the command's options
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ftp_deploy.exporters.options import ExportOptions
from ftp_deploy.exporters.pipeline import ExportResult, export_onnx
from ftp_deploy.formats.export_manifest import ExportManifest
from ftp_deploy.progress import NO_PROGRESS, Progress


@dataclass
class Export:
    """The artifact folder written, its manifest, and the Triton configs added (with `triton_repo`)."""

    out: Path
    manifest: ExportManifest
    triton_configs: list[Path] = field(default_factory=list)


def export(
    run_dir: Path | str,
    out: Path | str,
    options: ExportOptions | None = None,
    progress: Progress = NO_PROGRESS,
    **fields: Any,
) -> Export:
    """Export the routed model of `run_dir` into `out` as `options` (with `fields` replaced by name) say."""
    opts, run_dir, out = replace(options or ExportOptions(), **fields), Path(run_dir), Path(out)
    shapes = (opts.min_shape, opts.opt_shape, opts.max_shape)
    if opts.triton_repo is not None:
        from ftp_deploy.exporters.triton_repo import check_repository

        check_repository(opts.triton_repo, out.name)
    result: ExportResult
    if opts.engine == "trt":
        from ftp_deploy.engines.trt_profile import DEFAULT_PROFILE, ShapeProfile
        from ftp_deploy.exporters.trt_export import TrtOptions, export_trt

        default = (DEFAULT_PROFILE.min_shape, DEFAULT_PROFILE.opt_shape, DEFAULT_PROFILE.max_shape)
        profile = ShapeProfile(*(given or fallback for given, fallback in zip(shapes, default, strict=True)))
        result = export_trt(run_dir, out, opts, TrtOptions(profile, opts.onnx_only), progress=progress)
    else:
        result = export_onnx(run_dir, out, opts, progress=progress)
    configs: list[Path] = []
    if opts.triton_repo is not None:
        from ftp_deploy.exporters.triton_repo import write_triton_repository

        configs = write_triton_repository(result.out, opts.triton_repo, max_batch_size=opts.triton_max_batch)
    return Export(result.out, result.manifest, configs)
