"""Triton Python-backend model: generation from an ftp-deploy --with-past export (copied as `1/model.py`).

Triton runs this file in its Python backend stub, where `triton_python_backend_utils` exists; it
is not imported anywhere else. The work is `ftp_deploy.serving.triton_model`; this layer turns
Triton's requests into rows and rows into responses. One file serves both models of a repository:
the plain one (one response per request: HTTP and gRPC inference) and the decoupled one (a
response per token: gRPC streaming, HTTP `generate_stream`), told apart by the config's
transaction policy.

The export is read from `artifact_dir` (a config parameter: `ftp-deploy serve` points it at the
export folder) or else from the `artifact` folder beside this file (`export --triton-repo`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

ARTIFACT_FOLDER = "artifact"


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        # Triton 2.51's stub (the nvidia-pytriton 0.7 wheel's) hands request tensors over garbled under
        # numpy 2 (seen: every value wrong), while a tensor made and read back in here looks right, so no
        # self-test can tell: refuse numpy 2 outright. Whether a newer stub reads numpy 2 is not checked.
        if int(np.__version__.split(".")[0]) >= 2:
            raise pb_utils.TritonModelException(
                f"numpy {np.__version__} in the serving environment: this Triton Python backend needs numpy<2"
            )
        _exit_with_server()
        from ftp_deploy.serving.triton_model import GenerationService

        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        folder = parameters.get("artifact_dir") or str(
            Path(args["model_repository"]) / args["model_version"] / ARTIFACT_FOLDER
        )
        threads = int(parameters["threads"]) if parameters.get("threads") else None
        self.name = str(args.get("model_name", config.get("name", "")))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.service = GenerationService.open(Path(folder), threads=threads)

    def execute(self, requests: list[Any]) -> list[Any] | None:
        from ftp_deploy.serving.triton_model import RequestError

        errors: dict[int, str] = {}
        rows = []
        for index, request in enumerate(requests):
            inputs = {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}
            try:
                rows.append((index, self.service.parse(inputs, _parameters(request))))
            except RequestError as err:
                errors[index] = str(err)
        bad = set(errors)  # the client's mistakes (INVALID_ARG); the others are the server's (INTERNAL)
        if self.decoupled:
            self._stream(requests, rows, errors)
            return None
        results: dict[int, Any] = {}
        if rows:
            try:
                done = self.service.run([row for _, row in rows], _watch(requests, [index for index, _ in rows]))
                results = {index: (row, result) for (index, row), result in zip(rows, done, strict=True)}
            except Exception as err:  # a failure of the runtime: every row of this batch gets it, the server goes on
                errors.update({index: f"generation failed: {err}" for index, _ in rows})
        responses = []
        for index in range(len(requests)):
            if index in errors:
                responses.append(pb_utils.InferenceResponse(error=_error(errors[index], index in bad)))
            else:
                row, result = results[index]
                responses.append(pb_utils.InferenceResponse(_tensors(self.service.outputs(row, result))))
        return responses

    def _stream(self, requests: list[Any], rows: list[tuple[int, Any]], errors: dict[int, str]) -> None:
        from ftp_deploy.serving.triton_model import TextDelta

        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for index, message in errors.items():
            requests[index].get_response_sender().send(
                pb_utils.InferenceResponse(error=_error(message, True)), flags=final
            )
        if not rows:
            return
        senders = [requests[index].get_response_sender() for index, _ in rows]
        deltas = [TextDelta(self.service) for _ in rows]
        wanted = _watch(requests, [index for index, _ in rows])

        def on_token(position: int, token: int) -> bool:
            if not wanted(position, token):
                return False
            piece = deltas[position].add(token)
            outputs = {
                "token_ids": np.asarray([[token]], dtype=np.int64),
                "text_output": np.asarray([[piece.encode("utf-8")]], dtype=np.object_),
            }
            try:
                senders[position].send(pb_utils.InferenceResponse(_tensors(outputs)))
            except Exception:  # the client is gone (its stream closed): stop this row, keep the others
                return False
            return True

        try:
            results = self.service.run([row for _, row in rows], on_token)
        except Exception as err:
            failure = _error(f"generation failed: {err}", False)
            for sender in senders:
                _send_quietly(sender, pb_utils.InferenceResponse(error=failure))
            return
        for position, ((_, row), result) in enumerate(zip(rows, results, strict=True)):
            if result.finish_reason == "cancelled":
                self._log(
                    f"a client left mid-stream after {len(result.tokens)} of {row.max_tokens} tokens; its row stopped"
                )
                _send_quietly(senders[position], None)
                continue
            outputs = self.service.outputs(row, result, text=deltas[position].rest())
            del outputs["token_ids"]  # every token went out in its own response
            _send_quietly(senders[position], pb_utils.InferenceResponse(_tensors(outputs)))

    def _log(self, message: str) -> None:
        logger = getattr(pb_utils, "Logger", None)
        if logger is not None:
            logger.log_info(f"{self.name}: {message}")


def _exit_with_server() -> None:
    """End this stub process once the server that started it is gone (its parent changes).

    A stub that was generating when its server was killed was seen to stay for good (parent PID 1),
    holding its memory; `ftp-deploy serve` also ends the server's process group, but a server killed
    some other way (or a `serve` killed with SIGKILL) leaves no one else to do it.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-server", daemon=True).start()


def _watch(requests: list[Any], indices: list[int]) -> Any:
    """on_token for rows whose only output is the end: False once the request's client cancelled it."""

    def on_token(position: int, token: int) -> bool:
        request = requests[indices[position]]
        return not (hasattr(request, "is_cancelled") and request.is_cancelled())

    return on_token


def _parameters(request: Any) -> dict[str, Any]:
    """The request's parameters (a JSON object: what `generate` clients send beside the inputs)."""
    try:
        parsed = json.loads(request.parameters() or "{}")
    except (AttributeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _error(message: str, bad_request: bool) -> Any:
    """A Triton error: INVALID_ARG (HTTP 400) for a request the model cannot take, INTERNAL (500) otherwise."""
    return pb_utils.TritonError(
        message, pb_utils.TritonError.INVALID_ARG if bad_request else pb_utils.TritonError.INTERNAL
    )


def _send_quietly(sender: Any, response: Any) -> None:
    """The last response of a stream; a client that already left cannot receive it, which is no error here."""
    try:
        if response is None:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    except Exception:
        pass


def _tensors(outputs: dict[str, np.ndarray]) -> list[Any]:
    return [pb_utils.Tensor(name, value) for name, value in outputs.items()]
