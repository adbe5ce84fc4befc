"""Causal attention over one block's slots as a standalone ONNX graph, one op form at a time: time and memory
in ONNX Runtime (CPU), SmolLM2's shape by default (9 query heads, 3 key/value heads, head size 64).

The forms a prefill block could export (exporters/attention.py keeps the first two):

- chain: MatMul -> scale -> add a [K, K] additive mask -> Softmax -> MatMul with the query heads folded
  into the rows of their key/value head (the standard-op form, and every export's prefill before);
- gqa: com.microsoft GroupQueryAttention, prompt mode, rotary done outside (do_rotary=0);
- mha: com.microsoft MultiHeadAttention with unidirectional=1 (keys and values repeated per query head);
- attention23: the opset-23 Attention op with is_causal=1.

Every form runs in a fresh child process, so the memory it reports is its own: the peak resident memory
(VmHWM) minus the resident memory before the first run, with its inputs counted separately. At 512 slots
each output is checked against a numpy reference.

    python benchmarks/attention_ops.py --slots 1434,2867,5734 --json attention_ops.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import status_mib

FORMS = ("chain", "gqa", "mha", "attention23")
CHECKED_SLOTS = 512


def build(form: str, heads: int, kv_heads: int, dim: int) -> Any:
    """The form's one-block ONNX model."""
    from onnx import TensorProto, helper

    def tensor(name: str, shape: list[Any] | None, kind: int = TensorProto.FLOAT) -> Any:
        return helper.make_tensor_value_info(name, kind, shape)

    microsoft = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    if form == "chain":
        nodes = [
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["q", "kt"], ["s0"]),
            helper.make_node("Mul", ["s0", "scale"], ["s1"]),
            helper.make_node("Reshape", ["s1", "rows5"], ["s2"]),
            helper.make_node("Unsqueeze", ["mask", "axis2"], ["m5"]),
            helper.make_node("Add", ["s2", "m5"], ["s3"]),
            helper.make_node("Reshape", ["s3", "rows4"], ["s4"]),
            helper.make_node("Softmax", ["s4"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["out"]),
        ]
        constants = [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [dim**-0.5]),
            helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
        ]
        inputs = [
            tensor("q", ["B", kv_heads, "RS", dim]),
            tensor("k", ["B", kv_heads, "S", dim]),
            tensor("v", ["B", kv_heads, "S", dim]),
            tensor("mask", ["B", 1, "S", "S"]),
            tensor("rows5", [5], TensorProto.INT64),
            tensor("rows4", [4], TensorProto.INT64),
        ]
        return helper.make_model(helper.make_graph(nodes, "chain", inputs, [tensor("out", None)], constants))
    if form == "gqa":
        node = helper.make_node(
            "GroupQueryAttention", ["q", "k", "v", "", "", "seqlens_k", "total"], ["out", "present_k", "present_v"],
            domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, do_rotary=0,
        )  # fmt: skip
        inputs = [
            tensor("q", ["B", "S", heads * dim]),
            tensor("k", ["B", "S", kv_heads * dim]),
            tensor("v", ["B", "S", kv_heads * dim]),
            tensor("seqlens_k", ["B"], TensorProto.INT32),
            tensor("total", [], TensorProto.INT32),
        ]
        graph = helper.make_graph([node], "gqa", inputs, [tensor("out", None)])
        return helper.make_model(graph, opset_imports=microsoft)
    if form == "mha":
        node = helper.make_node(
            "MultiHeadAttention", ["q", "k", "v"], ["out"], domain="com.microsoft", num_heads=heads, unidirectional=1
        )
        inputs = [tensor(name, ["B", "S", heads * dim]) for name in ("q", "k", "v")]
        return helper.make_model(
            helper.make_graph([node], "mha", inputs, [tensor("out", None)]), opset_imports=microsoft
        )
    node = helper.make_node(
        "Attention", ["q", "k", "v"], ["out"], is_causal=1, q_num_heads=heads, kv_num_heads=kv_heads
    )
    inputs = [
        tensor("q", ["B", heads, "S", dim]),
        tensor("k", ["B", kv_heads, "S", dim]),
        tensor("v", ["B", kv_heads, "S", dim]),
    ]
    graph = helper.make_graph([node], "attention23", inputs, [tensor("out", None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def feeds(form: str, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """The form's inputs for queries [1, H, S, D] and keys/values [1, KV, S, D] already rotated."""
    _, heads, slots, dim = q.shape
    kv_heads = k.shape[1]

    def packed(states: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(states.transpose(0, 2, 1, 3).reshape(1, slots, -1))

    if form == "chain":
        mask = np.where(np.tril(np.ones((slots, slots), bool)), 0, np.finfo(np.float32).min).astype(np.float32)
        rep = heads // kv_heads
        return {
            "q": q.reshape(1, kv_heads, rep * slots, dim), "k": k, "v": v, "mask": mask[None, None],
            "rows5": np.array([1, kv_heads, rep, slots, slots]), "rows4": np.array([1, kv_heads, rep * slots, slots]),
        }  # fmt: skip
    if form == "gqa":
        lengths = {"seqlens_k": np.array([slots - 1], np.int32), "total": np.array(slots, np.int32)}
        return {"q": packed(q), "k": packed(k), "v": packed(v), **lengths}
    if form == "mha":
        rep = heads // kv_heads
        return {"q": packed(q), "k": packed(np.repeat(k, rep, 1)), "v": packed(np.repeat(v, rep, 1))}
    return {"q": q, "k": k, "v": v}


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    rep = q.shape[1] // k.shape[1]
    scores = q @ np.repeat(k, rep, 1).transpose(0, 1, 3, 2) * q.shape[-1] ** -0.5
    scores = np.where(np.tril(np.ones(scores.shape[-2:], bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ np.repeat(v, rep, 1)


def child(form: str, slots: int, heads: int, kv_heads: int, dim: int, runs: int, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        build(form, heads, kv_heads, dim).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, n, slots, dim), dtype=np.float32) for n in (heads, kv_heads, kv_heads))
    inputs = feeds(form, q, k, v)
    before = status_mib("VmRSS:")
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = session.run(None, inputs)[0]
        times.append(time.perf_counter() - start)
    result: dict[str, Any] = {
        "form": form,
        "slots": slots,
        "ms": min(times) * 1e3,
        "memory_rise_mib": status_mib("VmHWM:") - before,
        "inputs_mib": sum(a.nbytes for a in inputs.values()) / 2**20,
    }
    if slots <= CHECKED_SLOTS:
        got = (
            out.reshape(1, heads, slots, dim) if form in ("chain", "attention23") else out.reshape(1, slots, heads, dim)
        )
        got = got if form in ("chain", "attention23") else got.transpose(0, 2, 1, 3)
        result["max_abs_error"] = float(np.abs(got - reference(q, k, v)).max())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("FORM", "SLOTS"), help=argparse.SUPPRESS)
    parser.add_argument("--slots", default="512,1434,2867,5734", help="slot counts (0.7 of 2048, 4096, 8192 tokens)")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="runs per child (the fastest reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    shape = (args.heads, args.kv_heads, args.head_dim)
    if args.child:
        form, slots = args.child
        print(json.dumps(child(form, int(slots), *shape, args.runs, args.threads)))
        return
    forms = [form.strip() for form in args.forms.split(",")]
    if set(forms) - set(FORMS):
        parser.error(f"unknown forms {sorted(set(forms) - set(FORMS))}; choose from {', '.join(FORMS)}")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.threads} threads")
    results = []
    for slots in (int(s) for s in args.slots.split(",")):
        for form in forms:
            command = [sys.executable, __file__, "--child", form, str(slots), "--heads", str(args.heads),
                       "--kv-heads", str(args.kv_heads), "--head-dim", str(args.head_dim), "--runs", str(args.runs),
                       "--threads", str(args.threads)]  # fmt: skip
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            error = f", max |error| {result['max_abs_error']:.1e}" if "max_abs_error" in result else ""
            print(
                f"{slots:>6} slots {form:12} {result['ms']:>8.0f} ms  memory rise {result['memory_rise_mib']:>6.0f} MiB"
                f" (inputs {result['inputs_mib']:.0f} MiB){error}"
            )
    if args.json is not None:
        import onnxruntime

        figures = {"onnxruntime": onnxruntime.__version__, "threads": args.threads, "shape": shape, "results": results}
        figures["load_average_after"] = os.getloadavg()[0]
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
