"""report.json of `ftp-deploy verify`, and the records it is made of: the parity of every output
against PyTorch within one tolerance, the decode check of a --with-past export, and latency.

Export validation makes the same ParityReport (comparison/parity) and records its summary in the
manifest; verify writes all of it here, beside report.md, latency.png, Polygraphy's
run_results.json and the feeds it ran (inputs.json).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ftp_deploy.errors import UsageError
from ftp_deploy.formats.record import Document
from ftp_deploy.placement import Placement

REPORT_JSON = "report.json"
LATENCY_PNG = "latency.png"
RUN_RESULTS = "run_results.json"  # Polygraphy's own results file (`polygraphy run --load-outputs`)
INPUTS = "inputs.json"  # the feeds, in Polygraphy's JSON (`--inputs` replays them)

HIDDEN = re.compile(r"hidden_(\d+)$")  # a block's hidden-state output (debug outputs)
STAT_NAMES = ("max", "mean", "median", "p99")

# Defaults per exported dtype: fp32 as DEPLOYMENT_FACTS measures it, half precisions by their epsilon.
DEFAULT_TOLERANCES = {"fp32": (1e-3, 1e-3), "fp16": (5e-2, 5e-2), "bf16": (2e-1, 1e-1)}


@dataclass(frozen=True)
class Tolerance:
    """An element passes if within `atol` in units of its token's scale (`token_scale`) or within `rtol`
    of itself; routing decisions must agree on at least `min_routing_agreement` of (token, block) pairs."""

    atol: float
    rtol: float
    min_routing_agreement: float = 0.999

    def __post_init__(self) -> None:
        if self.atol <= 0 or self.rtol <= 0:
            raise UsageError(f"tolerances must be > 0 (got atol={self.atol:g}, rtol={self.rtol:g})")
        if not 0 <= self.min_routing_agreement <= 1:
            raise UsageError(f"the routing agreement required must lie in [0, 1], got {self.min_routing_agreement:g}")

    @classmethod
    def for_dtype(cls, dtype: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
        default_atol, default_rtol = DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES["fp32"])
        return cls(default_atol if atol is None else atol, default_rtol if rtol is None else rtol)


@dataclass
class OutputParity:
    """Error statistics of one output over every compared feed (worst feed per statistic)."""

    name: str
    passed: bool
    absolute: dict[str, float]
    relative: dict[str, float]


@dataclass
class ParityReport:
    """`mismatches`: outputs one runner has and the other lacks, or of another shape (left out of
    `outputs`). `hidden_max_abs_diff` is in the hidden states' own units, not scaled per token."""

    tolerance: Tolerance
    outputs: list[OutputParity]
    top1_agreement: float
    routing_agreement: float | None
    first_failing_block: str | None
    hidden_max_abs_diff: float | None = None
    mismatches: list[str] = field(default_factory=list)
    feeds: list[dict[str, int]] = field(default_factory=list)

    def failures(self, include_hidden: bool = False) -> list[str]:
        """Every check that failed: missing or misshapen outputs, the logits (and, with
        `include_hidden`, the hidden states) beyond tolerance, and routing agreement below its minimum."""
        tol = self.tolerance
        problems = list(self.mismatches)
        for out in self.outputs:
            if out.passed or not (out.name == "logits" or (include_hidden and HIDDEN.match(out.name))):
                continue
            hidden = bool(HIDDEN.match(out.name))  # its statistics are in units of the token's scale already
            units = " (in units of each token's largest |value|)" if hidden else ""
            scale = "" if hidden else " x the token's largest |logit|"
            limits = f"atol {tol.atol:g}{scale} and rtol {tol.rtol:g}"
            problems.append(f"{out.name}: max |diff| {out.absolute['max']:.3g}{units}, beyond {limits}")
        if self.routing_agreement is not None and not self.routing_agreement >= tol.min_routing_agreement:
            problems.append(
                f"routing decisions agree on {self.routing_agreement:.4%} of (token, block) pairs, "
                f"below {tol.min_routing_agreement:.1%}"
            )
        return problems

    @property
    def passed(self) -> bool:
        """The verdict of verify: hidden states locate an error in the logits, they do not decide it."""
        return not self.failures()

    def max_abs_diff(self, name: str) -> float | None:
        return next((o.absolute["max"] for o in self.outputs if o.name == name), None)


@dataclass
class DecodeReport:
    """`logits_max_abs_diff`: worst over steps (prefill's next-token logits included) against the masked reference;
    `cache_max_abs_diff`: keys and values at valid slots against PyTorch's cache; `failures` names what failed."""

    steps: int
    batch: int
    prompt_len: int
    tokens_identical: bool
    first_token_mismatch: int | None
    logits_max_abs_diff: float
    logits_passed: bool
    cache_lengths_equal: bool
    cache_max_abs_diff: float
    cache_passed: bool
    decode_median_ms: float
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Latency:
    seq_len: int
    batch: int
    runs: int
    median_ms: float
    p90_ms: float
    tokens_per_s: float


@dataclass
class LatencyComparison:
    routed: list[Latency]
    dense: list[Latency] | None
    ideal_speedup: dict[int, float]
    peak_rss_mib: float

    def speedup(self) -> dict[int, float]:
        if self.dense is None:
            return {}
        return {d.seq_len: d.median_ms / r.median_ms for d, r in zip(self.dense, self.routed, strict=True)}


@dataclass
class VerifyReport(Document):
    FILE: ClassVar[str] = REPORT_JSON
    FORMAT: ClassVar[str] = "ftp-deploy/verify-report"
    VERSION: ClassVar[int] = 1
    DESCRIPTION: ClassVar[str] = "verify report"

    artifact: str
    baseline: str | None
    runtime: str
    dtype: str
    graph: str
    compared: str  # what was compared with what (the file as exported, or widened to fp32)
    reference_placement: Placement
    environment: dict[str, Any]  # CPU, threads, GPU, package versions
    passed: bool
    parity: ParityReport
    decode: DecodeReport | None  # None where decode was not checked; `decode_note` says why
    decode_note: str
    latency: LatencyComparison | None
