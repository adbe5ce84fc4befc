"""`ftp-deploy serve` with the real SmolLM2-135M (slow): its routed --with-past export on a real tritonserver.

Guards: greedy answers over HTTP and gRPC, plain and through the chat template, token-identical to
`ftp-deploy generate --runtime onnxrt`; the stream sends the same tokens; four concurrent requests of
different lengths (batched together) each equal its prompt alone. The tiny-model suite: tests/test_serve.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.generation.pipeline import generate as generate_text
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.serving.server import RunningServer, start_server
from tests.test_serve import grpc_infer, http_infer, request, settings, streamed

pytestmark = pytest.mark.slow

PROMPTS = (
    ("The capital of France is", False, 24),
    ("Why is the sky blue?", True, 40),
    ("One, two, three, four, five, six, seven, eight,", False, 16),
)


@pytest.fixture(scope="module")
def art(smollm2, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-smollm2")
    schedule = Schedule.uniform(0.3, smollm2.model.config.num_hidden_layers)
    routed = RoutedModel(smollm2.model, schedule, RouterSpec(kind="static"))
    save_artifact(RoutedArtifact.from_model(routed, smollm2.ref), root / "run")
    export_onnx(root / "run", root / "smollm2", with_past=True)
    return root / "smollm2"


@pytest.fixture(scope="module")
def server(art: Path) -> Iterator[RunningServer]:
    with start_server([art], settings(threads=2)) as running:
        yield running


def chat(value: bool) -> dict[str, np.ndarray]:
    return {"chat": np.asarray([[value]], dtype=bool)} if value else {}


def test_smollm2_answers_equal_generate(server: RunningServer, art: Path) -> None:
    for prompt, use_chat, max_tokens in PROMPTS:
        made = generate_text(art, prompt, max_new_tokens=max_tokens, runtime="onnxrt", chat=use_chat, threads=2)
        expected = {"tokens": made.generation.token_ids[0], "text": made.text}
        inputs = request(prompt, max_tokens, **chat(use_chat))
        for infer in (http_infer, grpc_infer):
            got = infer(server, "smollm2-generate", inputs)
            assert {key: got[key] for key in expected} == expected, (prompt, infer.__name__)
        tokens = [int(r["token_ids"][0, 0]) for r in streamed(server, "smollm2-stream", inputs)[:-1]]
        assert tokens == expected["tokens"]


def test_smollm2_concurrent_requests_of_different_lengths(server: RunningServer, art: Path) -> None:
    expected = {}
    for prompt, _, max_tokens in PROMPTS:
        made = generate_text(art, prompt, max_new_tokens=max_tokens, runtime="onnxrt", threads=2)
        expected[prompt] = made.generation.token_ids[0]
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(len(PROMPTS))

    def client(prompt: str, max_tokens: int) -> None:
        barrier.wait(timeout=60)
        got[prompt] = grpc_infer(server, "smollm2-generate", request(prompt, max_tokens))["tokens"]

    threads = [threading.Thread(target=client, args=(p, m)) for p, _, m in PROMPTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert got == expected
