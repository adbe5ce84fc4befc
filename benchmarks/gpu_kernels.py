"""The token-compaction Triton kernels on a CUDA GPU: bit-exact against the reference, and timed.

1. Checks: TokenCompact and TokenScatter against reference.py, bit for bit, for fp32/fp16/bf16
   hidden states, ties, NaN/zero/denormal scores, K = T, K = 1, K = 4200 > 3840 (TensorRT TopK's
   limit), D not a multiple of 16, and the timed shape itself.
2. Timing (CUDA events, warm-up, median): a LLaMA-2-7B-shaped decoder layer (hidden 4096, 32
   heads, MLP 11008, random bf16 weights, SDPA attention) dense on all T tokens, against
   TokenCompact -> the same layer on the K kept tokens (rotary at their original positions) ->
   TokenScatter, batch 1, sparsity 0.3; plus the torch reference ops for comparison.
3. Optionally, a few kernel launch configurations timed at each T.

Needs torch with CUDA, triton and transformers; not TensorRT. Run from the repository root with
the package installed:

    python -m pip install --no-deps --no-build-isolation -e .
    python benchmarks/gpu_kernels.py --json gpu_kernels.json

Exit status: 0 when every check passed, 1 when one failed or a section broke (its error is in
the output and the JSON), 2 without a CUDA GPU or without the package.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json

SPARSITY_DEN = 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", default="2048,8192", help="comma-separated T values to time")
    parser.add_argument("--sparsity-num", type=int, default=300, help="sparsity in thousandths (300 = 0.3)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per figure (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True, help="time launch configs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.runs < 20:
        parser.error("--runs must be at least 20")
    return args


def same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    got, want = got.cpu(), want.cpu()
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    return torch.equal(got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8))


def special_scores(length: int, gen: torch.Generator) -> torch.Tensor:
    """Scores full of the values torch.sort treats specially: NaNs, signed zeros, denormals, infs."""
    values = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45, -1e-45, 1.0])
    return values[torch.randint(0, len(values), (1, length), generator=gen)]


def check_cases() -> list[dict[str, Any]]:
    """(name, B, T, D, dtype, sparsity_num, score kind) of every bit-exactness check."""
    cases = [
        {"name": f"random {dtype}", "shape": (2, 1000, 64), "dtype": dtype, "num": 300, "scores": "randn"}
        for dtype in ("float32", "float16", "bfloat16")
    ]
    cases += [
        {"name": "ties (4 levels)", "shape": (2, 2048, 64), "dtype": "bfloat16", "num": 300, "scores": "ties"},
        {"name": "all equal", "shape": (2, 777, 32), "dtype": "float16", "num": 500, "scores": "equal"},
        {"name": "NaN/zero/denormal", "shape": (2, 1300, 16), "dtype": "float32", "num": 385, "scores": "special"},
        {"name": "K = T", "shape": (2, 257, 64), "dtype": "bfloat16", "num": 0, "scores": "randn"},
        {"name": "K = 1", "shape": (3, 50, 64), "dtype": "float16", "num": 980, "scores": "randn"},
        {"name": "K = 4200 > 3840", "shape": (1, 6000, 128), "dtype": "bfloat16", "num": 300, "scores": "randn"},
        {"name": "T = 32768", "shape": (2, 32768, 64), "dtype": "float16", "num": 300, "scores": "ties"},
        {"name": "D = 100 (unaligned)", "shape": (2, 1000, 100), "dtype": "float16", "num": 300, "scores": "randn"},
        {"name": "timed shape", "shape": (1, 8192, 4096), "dtype": "bfloat16", "num": 300, "scores": "randn"},
    ]
    return cases


@torch.inference_mode()
def run_check(case: dict[str, Any], seed: int) -> dict[str, Any]:
    """One case through the kernels on CUDA and the reference on the CPU, compared bit for bit.

    Ran here only in Triton's interpreter, with `.cuda()` made a no-op.
    """
    from ftp_deploy.plugins.token_compaction.launch import token_compact_triton, token_scatter_triton
    from ftp_deploy.plugins.token_compaction.reference import token_compact, token_scatter

    gen = torch.Generator().manual_seed(seed)
    batch, seq_len, dim = case["shape"]
    hidden = torch.randn(batch, seq_len, dim, generator=gen).to(getattr(torch, case["dtype"]))
    scores = {
        "randn": lambda: torch.randn(batch, seq_len, generator=gen),
        "ties": lambda: torch.randint(0, 4, (batch, seq_len), generator=gen).float(),
        "equal": lambda: torch.zeros(batch, seq_len),
        "special": lambda: torch.cat([special_scores(seq_len, gen) for _ in range(batch)]),
    }[case["scores"]]()
    # The reference runs on the CPU: the single source of truth, independent of CUDA's sort.
    want_compact, want_indices = token_compact(hidden, scores, case["num"])
    updated = want_compact * 2
    want_out = token_scatter(hidden, updated, want_indices)
    got_compact, got_indices = token_compact_triton(hidden.cuda(), scores.cuda(), case["num"])
    got_out = token_scatter_triton(hidden.cuda(), updated.cuda(), want_indices.cuda())
    return {
        "name": case["name"],
        "shape": list(case["shape"]),
        "dtype": case["dtype"],
        "sparsity_num": case["num"],
        "kept": int(want_indices.shape[1]),
        "compact_indices_exact": same_bits(got_indices, want_indices),
        "compact_rows_exact": same_bits(got_compact, want_compact),
        "scatter_exact": same_bits(got_out, want_out),
    }


def cuda_ms(fn: Callable[[], object], warmup: int, runs: int) -> float:
    """Median milliseconds of `fn` on the current stream, by CUDA events around each run."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def build_layer(max_len: int) -> tuple[Any, Any]:
    """A LLaMA-2-7B decoder layer with random bf16 weights on the GPU, and its rotary embedding.

    Needs a GPU; the same transformers calls work on the CPU with a tiny config.
    """
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        max_position_embeddings=max_len,
        attn_implementation="sdpa",  # type: ignore[call-arg]  # PreTrainedConfig takes it through **kwargs
    )
    with torch.device("cuda"):
        layer = LlamaDecoderLayer(config, layer_idx=0).to(torch.bfloat16).eval()
        rotary = LlamaRotaryEmbedding(config)
    return layer, rotary


def run_layer(layer: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # No mask: SDPA is then causal over the sequence given, which for the compacted sequence is
    # the causal order of the kept positions, since TokenCompact keeps them in order.
    out = layer(hidden, position_embeddings=(cos, sin))
    return out[0] if isinstance(out, tuple) else out  # transformers < 4.56 returned a tuple


@torch.inference_mode()
def time_layer(layer: Any, rotary: Any, seq_len: int, num: int, warmup: int, runs: int) -> dict[str, Any]:
    """Dense layer vs compact -> layer on K -> scatter, and each part alone (needs CUDA)."""
    from ftp_deploy.plugins.token_compaction.launch import token_compact_triton, token_scatter_triton
    from ftp_deploy.plugins.token_compaction.reference import token_compact, token_scatter

    gen = torch.Generator(device="cuda").manual_seed(seq_len)
    hidden = torch.randn(1, seq_len, 4096, device="cuda", generator=gen).to(torch.bfloat16)
    scores = torch.randn(1, seq_len, device="cuda", generator=gen)
    # Rotary tables are computed once per model for all positions; the routed layer gathers its rows.
    cos, sin = rotary(hidden, torch.arange(seq_len, device="cuda")[None])
    compact, indices = token_compact_triton(hidden, scores, num)
    cos_k, sin_k = cos[0][indices], sin[0][indices]
    updated = run_layer(layer, compact, cos_k, sin_k)

    def routed() -> torch.Tensor:
        kept, idx = token_compact_triton(hidden, scores, num)
        return token_scatter_triton(hidden, run_layer(layer, kept, cos[0][idx], sin[0][idx]), idx)

    figures: dict[str, Callable[[], object]] = {
        "dense_layer_ms": lambda: run_layer(layer, hidden, cos, sin),
        "routed_ms": routed,
        "layer_on_kept_ms": lambda: run_layer(layer, compact, cos_k, sin_k),
        "compact_triton_ms": lambda: token_compact_triton(hidden, scores, num),
        "scatter_triton_ms": lambda: token_scatter_triton(hidden, updated, indices),
        "compact_torch_ms": lambda: token_compact(hidden, scores, num),
        "scatter_torch_ms": lambda: token_scatter(hidden, updated, indices),
    }
    result: dict[str, Any] = {"T": seq_len, "K": int(indices.shape[1])}
    result.update({name: cuda_ms(fn, warmup, runs) for name, fn in figures.items()})
    result["speedup"] = result["dense_layer_ms"] / result["routed_ms"]
    result["speedup_bound"] = result["dense_layer_ms"] / result["layer_on_kept_ms"]
    return result


@torch.inference_mode()
def sweep_configs(seq_len: int, num: int, warmup: int, runs: int) -> list[dict[str, Any]]:
    """Compact and scatter times for a few launch configurations, bf16, D = 4096, batch 1."""
    from ftp_deploy.plugins.token_compaction.geometry import LaunchConfig
    from ftp_deploy.plugins.token_compaction.launch import token_compact_triton, token_scatter_triton

    configs = [
        LaunchConfig(),
        LaunchConfig(block_d=256),
        LaunchConfig(rows=32),
        LaunchConfig(rows=128),
        LaunchConfig(num_warps=4),
        LaunchConfig(select_block=512),
    ]
    gen = torch.Generator(device="cuda").manual_seed(1)
    hidden = torch.randn(1, seq_len, 4096, device="cuda", generator=gen).to(torch.bfloat16)
    scores = torch.randn(1, seq_len, device="cuda", generator=gen)
    rows = []
    for config in configs:
        compact, indices = token_compact_triton(hidden, scores, num, config=config)
        compact_ms = cuda_ms(partial(token_compact_triton, hidden, scores, num, config=config), warmup, runs)
        scatter_ms = cuda_ms(partial(token_scatter_triton, hidden, compact, indices, config=config), warmup, runs)
        rows.append({"T": seq_len, "config": vars(config), "compact_ms": compact_ms, "scatter_ms": scatter_ms})
    return rows


def environment() -> dict[str, str]:
    """Versions and GPU name (needs CUDA)."""
    import transformers
    import triton

    return {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def print_checks(checks: list[dict[str, Any]]) -> None:
    print(f"{'check':<22} {'dtype':<9} {'B,T,D':<14} {'K':>5}  {'indices':>7}  {'rows':>7}  {'scatter':>7}")
    for c in checks:
        flags = [c["compact_indices_exact"], c["compact_rows_exact"], c["scatter_exact"]]
        marks = "  ".join(f"{'ok' if f else 'FAIL':>7}" for f in flags)
        print(f"{c['name']:<22} {c['dtype']:<9} {','.join(map(str, c['shape'])):<14} {c['kept']:>5}  {marks}")


def print_layer(rows: list[dict[str, Any]]) -> None:
    head = ["T", "K", "dense ms", "routed ms", "layer(K)", "compact", "scatter", "compact(torch)", "speedup", "bound"]
    print(" ".join(f"{h:>14}" for h in head))
    for r in rows:
        values = [r["T"], r["K"], r["dense_layer_ms"], r["routed_ms"], r["layer_on_kept_ms"]]
        values += [r["compact_triton_ms"], r["scatter_triton_ms"], r["compact_torch_ms"], r["speedup"]]
        values += [r["speedup_bound"]]
        print(" ".join(f"{v:>14}" if isinstance(v, int) else f"{v:>14.3f}" for v in values))


def print_sweep(rows: list[dict[str, Any]]) -> None:
    head = ["T", "rows", "select", "block_d", "radix", "warps", "compact ms", "scatter ms"]
    print(" ".join(f"{h:>10}" for h in head))
    for r in rows:
        c = r["config"]
        values = [r["T"], c["rows"], c["select_block"], c["block_d"], c["radix_bits"], c["num_warps"]]
        print(" ".join(f"{v:>10}" for v in values), f"{r['compact_ms']:>10.4f} {r['scatter_ms']:>10.4f}")


def run_section(name: str, figures: dict[str, Any], fn: Callable[[], Any]) -> bool:
    """figures[name] = fn(), or the error it raised; True when it returned."""
    try:
        figures[name] = fn()
    except Exception as exc:  # one broken section must not cost the others' figures on a lent GPU
        traceback.print_exc()
        figures[name] = {"error": repr(exc)}
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_kernels: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    try:
        import ftp_deploy.plugins.token_compaction.launch  # noqa: F401
    except ImportError as exc:
        print(f"gpu_kernels: {exc} (install: python -m pip install --no-deps --no-build-isolation -e .)")
        return 2

    seq_lens = [int(t) for t in args.seq_lens.split(",")]
    num, warmup, runs = args.sparsity_num, args.warmup, args.runs

    def checks() -> list[dict[str, Any]]:
        return [run_check(case, seed) for seed, case in enumerate(check_cases())]

    def layer_rows() -> list[dict[str, Any]]:
        layer, rotary = build_layer(max(seq_lens))
        return [time_layer(layer, rotary, t, num, warmup, runs) for t in seq_lens]

    def sweep_rows() -> list[dict[str, Any]]:
        return [row for t in seq_lens for row in sweep_configs(t, num, warmup, runs)]

    sections: list[tuple[str, Callable[[], Any], Callable[[Any], None]]] = [
        ("environment", environment, print),
        ("checks", checks, print_checks),
        ("layer", layer_rows, print_layer),
    ]
    if args.sweep:
        sections.append(("sweep", sweep_rows, print_sweep))
    figures: dict[str, Any] = {"sparsity_num": num, "runs": runs, "warmup": warmup}
    ok = True
    for name, compute, show in sections:
        if run_section(name, figures, compute):
            show(figures[name])
        else:
            ok = False
        # Written after every section, so a run cut short by a time limit keeps what it measured.
        write_json(args.json, figures)
    ok = ok and all(
        c["compact_indices_exact"] and c["compact_rows_exact"] and c["scatter_exact"] for c in figures["checks"]
    )
    figures["all_passed"] = ok
    write_json(args.json, figures)
    print("all checks passed" if ok else "SOME CHECKS FAILED OR A SECTION BROKE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
