"""`ftp-deploy serve`: a real tritonserver (the nvidia-pytriton wheel's) on 127.0.0.1, talked to with tritonclient.

Guards: greedy responses token-identical to `ftp-deploy generate --runtime onnxrt` over HTTP and gRPC;
streaming one token a response, the same tokens and text; 16 concurrent clients x 4 requests all
answered correctly, batched; every bad request answered with one error while the next succeeds; a
client leaving mid-stream; the server killed mid-stream (the client gets an error, a restarted server
serves); a repository from `export --triton-repo` served as it is; the CLI's refusals (exit 2 before
anything starts) and its Ctrl-C. The batch loop alone: tests/test_serve_batching.py; SmolLM2:
tests/test_serve_smollm2.py (slow).

Every server starts on free ports with a bounded start time and is stopped in a `finally`/fixture
teardown (and dies with the test process: PR_SET_PDEATHSIG). The serving environment is `.venv-serve`
(`make setup`), whose numpy<2 the Python backend needs.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer

from ftp_deploy import cli
from ftp_deploy.engines.onnx_generation import OnnxGenerator
from ftp_deploy.exporters.triton_repo import CONFIG_FILE, DEFAULT_MAX_BATCH, read_config, write_triton_repository
from ftp_deploy.formats.export_manifest import DECODER_FILE, MANIFEST_FILE, read_manifest, write_manifest
from ftp_deploy.generation.pipeline import generate as generate_text
from ftp_deploy.serving.options import ServeOptions
from ftp_deploy.serving.server import RunningServer, start_server
from ftp_deploy.serving.triton_model import INPUT_NAMES
from tests.conftest import REPO_ROOT
from tests.test_serve_batching import CONTEXT, tiny_export

pytest.importorskip("tritonclient.http", reason="needs pip install 'ftp-deploy[dev]' (tritonclient[http])")
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

SERVE_ENV = REPO_ROOT / ".venv-serve"
if not (SERVE_ENV / "bin" / "python3").is_file():
    pytest.skip("the serving environment .venv-serve is missing: make setup builds it", allow_module_level=True)

START_TIMEOUT_S = 120.0
RESPONSE_TIMEOUT_S = 60.0
PROMPTS = ("w1 w2 w3", "w40 w41 w7 w7 w12 w90 w3 w3 w3 w15 w60", "w5")
LONG = CONTEXT - 48  # a stream long enough (about 2 s here) to outlast a client that leaves after one token


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def settings(**changes: Any) -> ServeOptions:
    http, grpc = free_ports(2)
    fields: dict[str, Any] = dict(
        http_port=http, grpc_port=grpc, python_env=SERVE_ENV, threads=1, start_timeout=START_TIMEOUT_S
    )
    return ServeOptions(**{**fields, **changes})


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny export and a repository `export --triton-repo` wrote of it (models tiny, tiny-generate, tiny-stream)."""
    root = tmp_path_factory.mktemp("serve")
    art = tiny_export(root)
    write_triton_repository(art, root / "repo", name="tiny")
    return art, root / "repo"


@pytest.fixture(scope="module")
def server(exports: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("serve-log") / "tritonserver.log"
    with start_server(list(exports), settings(log_file=log)) as running:
        yield running


# -- clients ------------------------------------------------------------------------------------


def tensors(client: Any, inputs: dict[str, np.ndarray]) -> list[Any]:
    made = []
    for name, value in inputs.items():
        tensor = client.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        made.append(tensor)
    return made


def request(prompt: str | list[int], max_tokens: int, **extra: np.ndarray) -> dict[str, np.ndarray]:
    inputs = dict(extra)
    if isinstance(prompt, str):
        inputs["text_input"] = np.asarray([[prompt.encode()]], dtype=np.object_)
    else:
        inputs["input_ids"] = np.asarray([prompt], dtype=np.int64)
    inputs["max_tokens"] = np.asarray([[max_tokens]], dtype=np.int32)
    return inputs


def http_infer(server: RunningServer | str, model: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    url = server if isinstance(server, str) else server.http_url
    client = httpclient.InferenceServerClient(url, network_timeout=RESPONSE_TIMEOUT_S)
    return answer(client.infer(model, tensors(httpclient, inputs)))


def grpc_infer(server: RunningServer, model: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return answer(client.infer(model, tensors(grpcclient, inputs), client_timeout=RESPONSE_TIMEOUT_S))
    finally:
        client.close()


def answer(result: Any) -> dict[str, Any]:
    return {
        "tokens": result.as_numpy("token_ids")[0].tolist(),
        "text": result.as_numpy("text_output")[0, 0].decode(),
        "finish_reason": result.as_numpy("finish_reason")[0, 0].decode(),
    }


class Stream:
    """A gRPC stream: responses (or the error) as they come, each within RESPONSE_TIMEOUT_S."""

    def __init__(self, server: RunningServer) -> None:
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.events: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.events.put((result, error)))

    def send(self, model: str, inputs: dict[str, np.ndarray]) -> None:
        self.client.async_stream_infer(model, tensors(grpcclient, inputs))

    def next(self) -> tuple[Any, Any]:
        return self.events.get(timeout=RESPONSE_TIMEOUT_S)

    def collect(self) -> list[dict[str, Any]]:
        """Every response of one request up to its final one; an error raises."""
        responses = []
        while True:
            result, error = self.next()
            if error is not None:
                raise error
            outputs = {out.name: result.as_numpy(out.name) for out in result.get_response().outputs}
            responses.append(outputs)
            if result.get_response().parameters["triton_final_response"].bool_param:
                return responses

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def streamed(server: RunningServer, model: str, inputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    stream = Stream(server)
    try:
        stream.send(model, inputs)
        return stream.collect()
    finally:
        stream.close()


def reference(art: Path, prompt: str, max_tokens: int) -> dict[str, Any]:
    """What `ftp-deploy generate ART --prompt P --max-new-tokens N --runtime onnxrt` makes (its library call)."""
    made = generate_text(art, prompt, max_new_tokens=max_tokens, runtime="onnxrt", threads=1)
    return {"tokens": made.generation.token_ids[0], "text": made.text}


def alone_with_margin(generator: OnnxGenerator, prompt: list[int], max_tokens: int) -> tuple[list[int], float]:
    """Greedy tokens of one prompt alone (EOS left out) and the smallest top-1 minus top-2 logit on the way:
    with that margin far above float noise, a batched row cannot pick another token."""
    logits = generator.prefill(np.asarray([prompt]), None, max_tokens)
    tokens, margin = [], float("inf")
    for _ in range(max_tokens):
        top = np.sort(logits[0])[-2:]
        margin = min(margin, float(top[1] - top[0]))
        token = int(logits[0].argmax())
        if token in generator.record.eos_token_ids:
            break
        tokens.append(token)
        if len(tokens) == max_tokens:
            break
        logits = generator.decode(np.asarray([[token]]))
    return tokens, margin


# -- the tests ----------------------------------------------------------------------------------


def test_greedy_answers_equal_generate_over_http_and_grpc(
    server: RunningServer, exports: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    art, _ = exports
    assert server.models == ["art-generate", "art-stream", "tiny-generate", "tiny-stream"]
    assert server.not_served == ["tiny"]  # the onnxruntime model: NVIDIA's container only
    tokenizer = AutoTokenizer.from_pretrained(art)
    for prompt, max_tokens in zip(PROMPTS, (12, 30, 1), strict=True):
        expected = reference(art, prompt, max_tokens)
        ids = tokenizer(prompt).input_ids  # the same prompt as token ids
        for model in ("art-generate", "tiny-generate"):  # the export served, and the repository served as written
            for infer in (http_infer, grpc_infer):
                for sent in (request(prompt, max_tokens), request(ids, max_tokens)):
                    got = infer(server, model, sent)
                    assert {key: got[key] for key in ("tokens", "text")} == expected, (model, infer.__name__, prompt)
                    assert got["finish_reason"] == ("length" if len(expected["tokens"]) == max_tokens else "stop")
    # The command itself prints the same text.
    code = cli.main(["generate", str(art), "--prompt", PROMPTS[1], "--max-new-tokens", "30", "--runtime", "onnxrt"])
    assert code == 0
    assert capsys.readouterr().out.strip() == http_infer(server, "art-generate", request(PROMPTS[1], 30))["text"]


def test_the_repository_holds_both_generation_models(exports: tuple[Path, Path]) -> None:
    """What export --with-past --triton-repo writes: the configs Triton reads, the export inside each model."""
    art, repo = exports
    for name, decoupled in (("tiny-generate", False), ("tiny-stream", True)):
        config = read_config(repo / name / CONFIG_FILE)
        assert (config.backend, config.max_batch_size, config.model_transaction_policy.decoupled) == (
            "python",
            DEFAULT_MAX_BATCH,
            decoupled,
        )
        assert [spec.name for spec in config.input] == list(INPUT_NAMES)
        assert all(spec.optional and spec.allow_ragged_batch for spec in config.input)
        assert config.HasField("dynamic_batching") and "artifact_dir" not in config.parameters
        template = importlib.util.find_spec("ftp_deploy.serving.model")  # not importable outside Triton's stub
        assert template is not None and template.origin is not None
        assert (repo / name / "1" / "model.py").read_text() == Path(template.origin).read_text()
        for file in (*read_manifest(art).files, MANIFEST_FILE):  # linked, not copied
            assert os.path.samefile(repo / name / "1" / "artifact" / file, art / file)


def test_streaming_sends_the_same_tokens_one_a_response(server: RunningServer, exports: tuple[Path, Path]) -> None:
    whole = grpc_infer(server, "art-generate", request(PROMPTS[1], 30))
    responses = streamed(server, "art-stream", request(PROMPTS[1], 30))
    *tokens, last = responses
    assert all(r["token_ids"].shape == (1, 1) for r in tokens)
    assert [int(r["token_ids"][0, 0]) for r in tokens] == whole["tokens"]
    pieces = [r["text_output"][0, 0].decode() for r in responses]
    assert "".join(pieces) == whole["text"]
    assert last["finish_reason"][0, 0].decode() == whole["finish_reason"] and "token_ids" not in last
    assert {"ttft_ms", "total_ms", "decode_ms_per_token", "prompt_tokens"} <= set(last)
    # HTTP: Triton's generate_stream (server-sent events) gives the same tokens.
    body = json.dumps({"text_input": PROMPTS[1], "max_tokens": 30}).encode()
    url = f"http://{server.http_url}/v2/models/art-stream/generate_stream"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=RESPONSE_TIMEOUT_S) as sse:
        events = [json.loads(line[len(b"data: ") :]) for line in sse.read().splitlines() if line.startswith(b"data: ")]
    assert [event["token_ids"] for event in events[:-1]] == whole["tokens"]
    assert events[-1]["finish_reason"] == whole["finish_reason"]


def test_the_generate_endpoint_takes_options_as_parameters(server: RunningServer, exports: tuple[Path, Path]) -> None:
    """Triton's HTTP generate extension, as its clients (LiteLLM's triton provider, curl) call it."""
    body = json.dumps({"text_input": PROMPTS[1], "parameters": {"max_tokens": 7}}).encode()
    url = f"http://{server.http_url}/v2/models/art-generate/generate"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=RESPONSE_TIMEOUT_S) as answer:
        got = json.loads(answer.read())
    expected = reference(exports[0], PROMPTS[1], 7)
    assert (got["token_ids"], got["text_output"], got["finish_reason"]) == (
        expected["tokens"],
        expected["text"],
        "length",
    )


def test_sixteen_concurrent_clients_four_requests_each(server: RunningServer, exports: tuple[Path, Path]) -> None:
    generator = OnnxGenerator.open(exports[0], threads=1)
    rng = np.random.default_rng(1)
    work = []  # (client, prompt ids, max_tokens, expected tokens)
    while len(work) < 64:
        prompt = rng.integers(4, 96, size=int(rng.integers(3, 40))).tolist()
        max_tokens = int(rng.integers(1, 24))
        tokens, margin = alone_with_margin(generator, prompt, max_tokens)
        if margin > 1e-4:  # no near-tie: batching's float noise (about 1e-6) cannot change a token
            work.append((len(work) % 16, prompt, max_tokens, tokens))
    before = statistics(server, "art-generate")
    answers: dict[int, list[tuple[list[int], list[int]]]] = {client: [] for client in range(16)}
    failures: list[BaseException] = []
    start = threading.Barrier(16)

    def run_client(client: int) -> None:
        try:
            start.wait(timeout=RESPONSE_TIMEOUT_S)
            infer = http_infer if client % 2 else grpc_infer  # half the clients on each protocol
            for _, prompt, max_tokens, expected in (item for item in work if item[0] == client):
                answers[client].append((infer(server, "art-generate", request(prompt, max_tokens))["tokens"], expected))
        except BaseException as err:  # collected: a thread's exception would not fail the test
            failures.append(err)

    threads = [threading.Thread(target=run_client, args=(client,)) for client in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=4 * RESPONSE_TIMEOUT_S)
    assert not failures, failures[0]
    assert sum(len(pairs) for pairs in answers.values()) == 64
    for pairs in answers.values():
        for got, expected in pairs:
            assert got == expected
    after = statistics(server, "art-generate")
    requests, batches = (after[key] - before[key] for key in ("inference_count", "execution_count"))
    assert requests == 64 and batches < requests  # Triton's dynamic batcher put requests together


def statistics(server: RunningServer, model: str) -> dict[str, int]:
    client = httpclient.InferenceServerClient(server.http_url)
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return {key: int(stats[key]) for key in ("inference_count", "execution_count")}


BAD_REQUESTS = [
    ("empty text", "art-generate", {"text_input": np.asarray([[b" "]], dtype=np.object_)}, "the prompt is empty"),
    ("no tokens", "art-generate", {"input_ids": np.zeros((1, 0), np.int64)}, "input_ids holds no tokens"),
    ("beyond context", "art-generate", request([5] * (CONTEXT + 8), 1), "beyond the export's context"),
    ("max_tokens 0", "art-generate", request([5, 6], 0), "max_tokens must be >= 1, got 0"),
    ("beyond capacity", "art-generate", request([5, 6], CONTEXT), f"at most {CONTEXT - 2} new tokens fit"),
    ("out of vocabulary", "art-generate", request([5, 960], 2), "outside the vocabulary"),
    ("two prompts", "art-generate", {"input_ids": np.full((2, 3), 5, np.int64)}, "one prompt per request"),
    ("wrong name", "art-generate", {"prompt": np.asarray([[b"w1"]], dtype=np.object_)}, "unexpected inference input"),
    (
        "wrong dtype",
        "art-generate",
        {"input_ids": np.full((1, 3), 5, np.float32)},
        "data-type is 'FP32'",
    ),
    ("wrong shape", "art-generate", {"input_ids": np.full((1, 3, 2), 5, np.int64)}, "unexpected shape"),
    ("not loaded", "tiny", request([5, 6], 2), "unknown model"),
]


@pytest.mark.parametrize(("what", "model", "inputs", "message"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_a_bad_request_gets_one_error_and_the_next_request_succeeds(
    server: RunningServer, exports: tuple[Path, Path], what: str, model: str, inputs: dict, message: str
) -> None:
    good = request(PROMPTS[0], 4)
    expected = reference(exports[0], PROMPTS[0], 4)["tokens"]
    for infer in (http_infer, grpc_infer):
        with pytest.raises(InferenceServerException) as caught:
            infer(server, model, inputs)
        assert message in str(caught.value), str(caught.value)
        assert infer(server, "art-generate", good)["tokens"] == expected
    if model == "art-generate":  # the streaming model answers the same request with the same error
        stream = Stream(server)
        try:
            stream.send("art-stream", inputs)
            _, error = stream.next()
            assert error is not None and message in str(error), str(error)
        finally:
            stream.close()
        assert [int(r["token_ids"][0, 0]) for r in streamed(server, "art-stream", good)[:-1]] == expected


LEAVING_CLIENT = """
import queue, sys, numpy as np, tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient(sys.argv[1])
events = queue.Queue()
client.start_stream(callback=lambda result, error: events.put((result, error)))
ids = grpcclient.InferInput("input_ids", [1, 3], "INT64")
ids.set_data_from_numpy(np.array([[5, 6, 7]], dtype=np.int64))
budget = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
budget.set_data_from_numpy(np.array([[int(sys.argv[2])]], dtype=np.int32))
client.async_stream_infer("art-stream", [ids, budget])
result, error = events.get(timeout=60)
print("first token" if error is None else error, flush=True)
events.get(timeout=600)  # killed here by the test
"""


def leave_by_cancelling(server: RunningServer) -> None:
    stream = Stream(server)
    stream.send("art-stream", request([5, 6, 7], LONG))
    result, error = stream.next()
    assert error is None and result.as_numpy("token_ids").shape == (1, 1)
    stream.close(cancel=True)


def leave_by_dying(server: RunningServer) -> None:
    """A client process killed after its first token: its connection closes under the stream."""
    command = [sys.executable, "-c", LEAVING_CLIENT, server.grpc_url, str(LONG)]
    client = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "first token"
    finally:
        client.kill()
        client.wait()


def leave_http_stream(server: RunningServer) -> None:
    """generate_stream over HTTP, the connection closed after the first event."""
    host, port = server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=RESPONSE_TIMEOUT_S)
    body = json.dumps({"input_ids": [5, 6, 7], "max_tokens": LONG})
    connection.request("POST", "/v2/models/art-stream/generate_stream", body=body)
    answer = connection.getresponse()
    assert answer.status == 200 and answer.fp is not None
    while not answer.fp.readline().startswith(b"data: "):  # chunked: a size line, then the event
        pass
    assert connection.sock is not None
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()


def test_a_client_that_leaves_mid_stream_leaves_the_server_serving(
    server: RunningServer, exports: tuple[Path, Path]
) -> None:
    assert server.settings.log_file is not None
    expected = reference(exports[0], PROMPTS[0], 6)["tokens"]
    leaving = (leave_by_cancelling, leave_by_dying, leave_http_stream)
    for leave in leaving:
        leave(server)
        assert grpc_infer(server, "art-generate", request(PROMPTS[0], 6))["tokens"] == expected, leave.__name__
    # The model saw each client go and stopped its row long before LONG tokens (its log says so).
    deadline = time.monotonic() + RESPONSE_TIMEOUT_S
    left: list[str] = []
    while len(left) < len(leaving) and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [line for line in server.log_path.read_text().splitlines() if "left mid-stream" in line]
    assert len(left) == len(leaving), left
    assert all(int(line.split("after ")[1].split(" of")[0]) < LONG for line in left)


def test_a_server_killed_mid_stream_fails_the_client_and_a_restart_serves(exports: tuple[Path, Path]) -> None:
    art, _ = exports
    chosen = settings()
    running = start_server([art], chosen)
    try:
        stream = Stream(running)
        stream.send("art-stream", request([5, 6, 7], LONG))
        _, error = stream.next()
        assert error is None
        os.kill(running.process.pid, signal.SIGKILL)  # the server process alone, as a crash ends it
        while error is None:  # the tokens already on the wire, then the error
            _, error = stream.next()
        assert isinstance(error, InferenceServerException)
        stream.client.close()
        # Its backend stubs (one of them generating) end by themselves once their server is gone.
        assert group_gone(running.process.pid, within_s=30)
    finally:
        running.stop()
    with start_server([art], chosen) as again:  # the same ports
        got = http_infer(again, "art-generate", request(PROMPTS[0], 5))
        assert got["tokens"] == reference(art, PROMPTS[0], 5)["tokens"]


def group_gone(group: int, within_s: float) -> bool:
    """Whether no live process (zombies aside: the unreaped server) is left in the process group within `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        if not live_members(group):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def live_members(group: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)": state, ppid, pgrp, ...
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


# -- the command ----------------------------------------------------------------------------------


def serve_args(art: Path, chosen: ServeOptions) -> list[str]:
    ports = ["--http-port", str(chosen.http_port), "--grpc-port", str(chosen.grpc_port)]
    return ["serve", str(art), *ports, "--python-env", str(SERVE_ENV), "--threads", "1"]


def test_the_command_serves_until_ctrl_c(exports: tuple[Path, Path]) -> None:
    art, _ = exports
    chosen = settings()
    command = [sys.executable, "-m", "ftp_deploy.cli", *serve_args(art, chosen)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = process.stdout.readline() if process.stdout else ""
            if not line:
                break
            lines.append(line.rstrip())
            if line.startswith("Ctrl-C stops it."):
                break
        printed = "\n".join(lines)
        server_pid = int(printed.split("ready (pid ")[1].split(")")[0])
        assert f"http://127.0.0.1:{chosen.http_port}" in printed and f"127.0.0.1:{chosen.grpc_port}" in printed
        assert "art-generate" in printed and "art-stream" in printed
        got = http_infer(f"127.0.0.1:{chosen.http_port}", "art-generate", request(PROMPTS[0], 3))
        assert got["tokens"] == reference(art, PROMPTS[0], 3)["tokens"]
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, process.stderr.read() if process.stderr else ""
    assert group_gone(server_pid, within_s=0.5)  # stopped with its whole process group
    for port in (chosen.http_port, chosen.grpc_port):  # nothing listens any more
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_a_port_in_use_is_one_line_and_exit_2(exports: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    chosen = settings()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", chosen.grpc_port))
        taken.listen()
        code, err = run_cli(serve_args(exports[0], chosen), capsys)
    assert code == 2 and err == f"error: --grpc-port {chosen.grpc_port}: 127.0.0.1:{chosen.grpc_port} is in use " + (
        "(Address already in use)"
    )


def test_an_export_that_fails_its_manifest_is_refused(
    exports: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    art = tmp_path / "art"
    shutil.copytree(exports[0], art)
    with (art / "tokenizer.json").open("a") as tampered:
        tampered.write(" ")
    code, err = run_cli(serve_args(art, settings()), capsys)
    assert code == 2 and "does not match its manifest" in err and len(err.splitlines()) == 1
    # A prefill-only export (no decode graph), as export without --with-past writes it.
    shutil.copy2(exports[0] / "tokenizer.json", art / "tokenizer.json")
    manifest = read_manifest(art)
    (art / DECODER_FILE).unlink()
    (art / MANIFEST_FILE).unlink()
    write_manifest(art, replace(manifest, graphs={"prefill": manifest.graphs["prefill"]}, with_past=None))
    code, err = run_cli(serve_args(art, settings()), capsys)
    assert code == 2 and "prefill-only export" in err and "--with-past" in err
    code, err = run_cli(serve_args(tmp_path, settings()), capsys)
    assert code == 2 and "neither an export folder" in err


def test_an_environment_without_the_extra_is_refused(
    exports: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    argv = serve_args(exports[0], settings())
    argv[argv.index("--python-env") + 1] = str(bare)
    code, err = run_cli(argv, capsys)
    assert code == 2 and err.startswith("error: no Triton Inference Server in the Python environment")
    assert "pip install 'ftp-deploy[serve]'" in err and len(err.splitlines()) == 1


def test_an_environment_with_numpy_2_is_refused(
    exports: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Triton 2.51's stub reads numpy 2 arrays wrongly: refused before it starts (a Python that reports numpy 2)."""
    env = tmp_path / "numpy2-env"
    (env / "bin").mkdir(parents=True)
    probe = json.dumps({"pytriton": str(tmp_path / "pytriton/__init__.py"), "numpy": "2.4.6", "missing": []})
    (env / "bin" / "python3").write_text(f"#!/bin/sh\necho '{probe}'\n")
    (env / "bin" / "python3").chmod(0o755)
    argv = serve_args(exports[0], settings())
    argv[argv.index("--python-env") + 1] = str(env)
    code, err = run_cli(argv, capsys)
    assert code == 2 and "has numpy 2.4.6" in err and "numpy<2" in err


def test_a_model_that_fails_to_load_is_one_line_and_exit_1(
    exports: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server starts, its model does not load (a repository whose copy of the export was changed)."""
    _, repo = exports
    broken = tmp_path / "repo"
    shutil.copytree(repo, broken, ignore=shutil.ignore_patterns("tiny"))  # the ORT model is no matter here
    for model in ("tiny-generate", "tiny-stream"):
        tokenizer = broken / model / "1" / "artifact" / "tokenizer.json"
        changed = tokenizer.read_text() + " "
        tokenizer.unlink()  # a hard link to the export's own file: replace it, never write through it
        tokenizer.write_text(changed)
    code, err = run_cli(serve_args(broken, settings()), capsys)
    assert code == 1 and err.splitlines()[0] == "starting tritonserver ..." and len(err.splitlines()) == 2, err
    assert "failed to load 'tiny-" in err and err.endswith("tokenizer.json does not match its sha256"), err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-batch-size", "0"], "--max-batch-size must be >= 1, got 0"),
        (["--instances", "0"], "--instances must be >= 1, got 0"),
        (["--http-port", "70000"], "--http-port must lie in 1..65535, got 70000"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--log-file", "/no/such/folder/log.txt"], "the folder /no/such/folder does not exist"),
    ],
)
def test_out_of_range_options_are_one_line_and_exit_2(
    exports: tuple[Path, Path], capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    code, err = run_cli([*serve_args(exports[0], settings()), *options], capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
