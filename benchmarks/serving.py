"""Serving SmolLM2 from a real Triton Inference Server: routed vs dense export under concurrent clients.

One server (`ftp-deploy serve`'s library call, the nvidia-pytriton wheel's tritonserver) holds both
--with-past exports of the same weights: the routed one (static router, uniform sparsity) and the
dense one. Each client is a thread with its own gRPC stream (tritonclient) that sends its requests
one after another to the streaming model, so time to first token is what a client sees. Prompts are
distinct windows of held-out text (wikitext-2 test) sent as token ids, greedy, `--new-tokens` each;
Triton's dynamic batcher is on. Concurrency levels run one after another, dense and routed taking
turns (their order swapped at each level) so drift on a shared machine hits both alike.

Per export and concurrency: generated tokens per second over the level's wall time, p50/p99 time to
first token and end-to-end latency (client side), the batches the server ran (its statistics), and
every response checked against the same prompt generated alone in-process (`OnnxGenerator`, batch 1:
`ftp-deploy generate --runtime onnxrt`). A response whose tokens differ is "wrong" unless they first
differ where the alone run's top two logits lie within `--tie` of each other (a near-tie that float
noise of another batch shape may flip): those are counted apart, as "near-tie".

    python benchmarks/serving.py --json serving.json
    python benchmarks/serving.py --concurrency 1,4 --requests-per-client 1 --new-tokens 8   # a quick run
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import wikitext_windows, write_json

from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.engines.onnx_generation import OnnxGenerator
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.models import load_base_model
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.serving.options import ServeOptions
from ftp_deploy.serving.server import RunningServer, start_server

REPO_SERVE_ENV = Path(__file__).resolve().parents[1] / ".venv-serve"
GRAPHS = ("dense", "routed")


@dataclass
class Reference:
    tokens: list[int]
    margins: list[float]  # top-1 minus top-2 logit at each step of the alone run


@dataclass
class Outcome:
    """One request as its client saw it."""

    tokens: list[int] = field(default_factory=list)
    ttft_s: float | None = None
    e2e_s: float | None = None
    error: str | None = None
    verdict: str = ""  # "ok", "near-tie", "wrong", "failed"


def alone(generator: OnnxGenerator, prompt: np.ndarray, new_tokens: int) -> Reference:
    """The prompt's greedy continuation on its own (batch 1), EOS left out, with each step's logit margin."""
    logits = generator.prefill(prompt[None], None, new_tokens)
    tokens: list[int] = []
    margins: list[float] = []
    for _ in range(new_tokens):
        top = np.sort(logits[0])[-2:]
        margins.append(float(top[1] - top[0]))
        token = int(logits[0].argmax())
        if token in generator.record.eos_token_ids:
            break
        tokens.append(token)
        if len(tokens) == new_tokens:
            break
        logits = generator.decode(np.asarray([[token]]))
    return Reference(tokens, margins)


def judge(outcome: Outcome, reference: Reference, tie: float) -> str:
    if outcome.error is not None:
        return "failed"
    if outcome.tokens == reference.tokens:
        return "ok"
    first = next(
        (i for i, (a, b) in enumerate(zip(outcome.tokens, reference.tokens, strict=False)) if a != b),
        min(len(outcome.tokens), len(reference.tokens)),
    )
    return "near-tie" if first < len(reference.margins) and reference.margins[first] < tie else "wrong"


def stream_request(client: Any, events: queue.Queue, model: str, prompt: np.ndarray, new_tokens: int) -> Outcome:
    import tritonclient.grpc as grpcclient

    ids = grpcclient.InferInput("input_ids", [1, int(prompt.shape[0])], "INT64")
    ids.set_data_from_numpy(prompt[None].astype(np.int64))
    budget = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
    budget.set_data_from_numpy(np.asarray([[new_tokens]], dtype=np.int32))
    outcome = Outcome()
    start = time.perf_counter()
    client.async_stream_infer(model, [ids, budget])
    while True:
        try:
            result, error = events.get(timeout=1800)
        except queue.Empty:
            outcome.error = "no response within 30 min"
            return outcome
        if error is not None:
            outcome.error = str(error)
            return outcome
        response = result.get_response()
        if any(out.name == "token_ids" for out in response.outputs):
            if outcome.ttft_s is None:
                outcome.ttft_s = time.perf_counter() - start
            outcome.tokens.append(int(result.as_numpy("token_ids")[0, 0]))
        if response.parameters["triton_final_response"].bool_param:
            outcome.e2e_s = time.perf_counter() - start
            return outcome


def run_level(
    server: RunningServer, model: str, prompts: np.ndarray, clients: int, per_client: int, new_tokens: int
) -> tuple[list[tuple[int, Outcome]], float]:
    """`clients` threads, each sending `per_client` requests in turn; (prompt index, outcome) pairs and wall time."""
    import tritonclient.grpc as grpcclient

    done: list[tuple[int, Outcome]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client_thread(number: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        events: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: events.put((result, error)))
        barrier.wait()
        try:
            for turn in range(per_client):
                index = (number * per_client + turn) % len(prompts)
                outcome = stream_request(client, events, model, prompts[index], new_tokens)
                with lock:
                    done.append((index, outcome))
        finally:
            client.stop_stream()
            client.close()

    threads = [threading.Thread(target=client_thread, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return done, time.perf_counter() - start


def batch_counts(server: RunningServer, model: str, at_least: int = 0) -> tuple[int, int]:
    """(requests, executions) the server counted for the model; waits (10 s at most) until `at_least` requests,
    since a decoupled model's batch is counted when its execute returns, just after its last response."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    deadline = time.monotonic() + 10
    while True:
        stats = client.get_inference_statistics(model)["model_stats"][0]
        counts = int(stats["inference_count"]), int(stats["execution_count"])
        if counts[0] >= at_least or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1e3 if values else None


def summarize_level(
    outcomes: list[tuple[int, Outcome]], wall_s: float, batches: tuple[int, int], clients: int
) -> dict[str, Any]:
    ttft = [o.ttft_s for _, o in outcomes if o.ttft_s is not None]
    e2e = [o.e2e_s for _, o in outcomes if o.e2e_s is not None and o.error is None]
    tokens = sum(len(o.tokens) for _, o in outcomes if o.error is None)
    verdicts = [o.verdict for _, o in outcomes]
    requests, executions = batches
    return {
        "clients": clients,
        "requests": len(outcomes),
        "wall_s": wall_s,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / wall_s,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p99_ms": percentile(e2e, 99),
        "server_batches": executions,
        "mean_batch": requests / executions if executions else None,
        "ok": verdicts.count("ok"),
        "near_tie": verdicts.count("near-tie"),
        "wrong": verdicts.count("wrong"),
        "failed": verdicts.count("failed"),
        "errors": sorted({o.error for _, o in outcomes if o.error is not None}),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_exports(work: Path, sparsity: float) -> dict[str, Path]:
    exports = {graph: work / f"smollm2-{graph}" for graph in GRAPHS}
    if all((folder / "manifest.json").is_file() for folder in exports.values()):
        return exports
    loaded = load_base_model("smollm2-135m")
    schedule = Schedule.uniform(sparsity, loaded.model.config.num_hidden_layers)
    routed = RoutedModel(loaded.model, schedule, RouterSpec(kind="static"))
    save_artifact(RoutedArtifact.from_model(routed, loaded.ref), work / "run")
    for graph, folder in exports.items():
        if not (folder / "manifest.json").is_file():
            export_onnx(work / "run", folder, dense=graph == "dense", with_past=True, overwrite=True)
    return exports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routed", type=Path, default=None, help="a routed --with-past export (default: made here)")
    parser.add_argument("--dense", type=Path, default=None, help="the dense --with-past export of the same weights")
    parser.add_argument("--sparsity", type=float, default=0.3, help="the static router's, when the exports are made")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep (and reuse) the exports made here")
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--distinct-prompts", type=int, default=16, help="windows the clients cycle through")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime threads per instance")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue-delay-ms", type=float, default=10.0)
    parser.add_argument("--tie", type=float, default=1e-3, help="logit margin below which a differing token is a tie")
    parser.add_argument("--python-env", type=Path, default=REPO_SERVE_ENV if REPO_SERVE_ENV.is_dir() else None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if (args.routed is None) != (args.dense is None):
        parser.error("give both --routed and --dense, or neither")
    if min(levels) < 1 or args.requests_per_client < 1 or args.new_tokens < 1:
        parser.error("--concurrency, --requests-per-client and --new-tokens must be >= 1")

    if args.routed is not None:
        exports = {"dense": args.dense, "routed": args.routed}
    else:
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="serving-bench-"))
        work.mkdir(parents=True, exist_ok=True)
        exports = make_exports(work, args.sparsity)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exports["routed"])
    distinct = min(args.distinct_prompts, max(levels) * args.requests_per_client)
    prompts = wikitext_windows(tokenizer, distinct, args.prompt_len).numpy()

    print(f"references: {distinct} prompts of {args.prompt_len} tokens, each alone, per export")
    references: dict[str, list[Reference]] = {}
    for graph, folder in exports.items():
        generator = OnnxGenerator.open(folder, threads=args.threads)
        references[graph] = [alone(generator, prompt, args.new_tokens) for prompt in prompts]
        del generator

    settings = ServeOptions(
        max_batch_size=args.max_batch_size,
        threads=args.threads,
        max_queue_delay_ms=args.max_queue_delay_ms,
        python_env=args.python_env,
        http_port=free_port(),
        grpc_port=free_port(),
    )
    names = {graph: f"{folder.name}-stream" for graph, folder in exports.items()}
    load_before = os.getloadavg()[0]
    results: list[dict[str, Any]] = []
    with start_server([exports["dense"], exports["routed"]], settings) as server:
        for graph in GRAPHS:  # first-call costs (allocations, kernel choice) out of the timings
            run_level(server, names[graph], prompts[:1], 1, 1, 2)
        for position, clients in enumerate(levels):
            order = GRAPHS if position % 2 == 0 else GRAPHS[::-1]
            for graph in order:
                before = batch_counts(server, names[graph])
                outcomes, wall = run_level(
                    server, names[graph], prompts, clients, args.requests_per_client, args.new_tokens
                )
                after = batch_counts(server, names[graph], at_least=before[0] + len(outcomes))
                for index, outcome in outcomes:
                    outcome.verdict = judge(outcome, references[graph][index], args.tie)
                counts = (after[0] - before[0], after[1] - before[1])
                row = {"graph": graph, **summarize_level(outcomes, wall, counts, clients)}
                results.append(row)
                print(_line(row), flush=True)
    ratios = {}
    for clients in levels:
        by_graph = {row["graph"]: row for row in results if row["clients"] == clients}
        ratios[str(clients)] = by_graph["routed"]["tokens_per_s"] / by_graph["dense"]["tokens_per_s"]
    top = str(max(levels))
    bad = sum(row["wrong"] + row["failed"] for row in results)
    target = {
        "routed_over_dense_tokens_per_s_at_max_concurrency": ratios[top],
        "target": 1.25,
        "met": ratios[top] >= 1.25 and bad == 0,
        "wrong_or_failed": bad,
    }
    print(f"routed / dense throughput: {', '.join(f'{c} clients {r:.2f}x' for c, r in ratios.items())}")
    print(f"target (>= 1.25x at {top} clients, no wrong or failed response): {target}")
    write_json(
        args.json,
        {
            "model": "smollm2-135m",
            "exports": {graph: str(folder) for graph, folder in exports.items()},
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "requests_per_client": args.requests_per_client,
            "distinct_prompts": distinct,
            "threads_per_instance": args.threads,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
            "greedy": True,
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
            "onnxruntime": onnxruntime.__version__,
            "tie": args.tie,
            "results": results,
            "routed_over_dense": ratios,
            "target": target,
        },
    )


def _line(row: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    return (
        f"{row['graph']:>6} x{row['clients']:<2} {row['tokens_per_s']:7.1f} tok/s  "
        f"ttft p50 {ms(row['ttft_p50_ms'])} p99 {ms(row['ttft_p99_ms'])} ms  "
        f"e2e p50 {ms(row['e2e_p50_ms'])} p99 {ms(row['e2e_p99_ms'])} ms  "
        f"batches {row['server_batches']} (mean {row['mean_batch'] or 0:.1f})  "
        f"ok {row['ok']} near-tie {row['near_tie']} wrong {row['wrong']} failed {row['failed']}"
    )


if __name__ == "__main__":
    main()
