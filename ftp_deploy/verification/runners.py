"""Runners on Polygraphy's interface (activate / infer / deactivate).

Polygraphy's own PytRunner moves inputs to CUDA unconditionally, so the PyTorch reference
is a BaseRunner subclass of our own that runs on CPU or CUDA. ONNX Runtime uses Polygraphy's
OnnxrtRunner unchanged.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from ftp_deploy.exporters.spec import hidden_name, indices_name
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.verification.inputs import INPUT_NAMES


class RoutedTorchRunner(BaseRunner):
    """The routed model in compact mode: the reference an exported graph must reproduce.

    Gives `logits` (all positions, or the last one with `last_token_logits`) and, with
    `debug_outputs`, each block's kept `indices_{l}` and outgoing `hidden_{l}`, the names the
    exporter uses for the same tensors.
    """

    def __init__(
        self,
        model: RoutedModel,
        last_token_logits: bool = False,
        debug_outputs: bool = False,
        device: str = "cpu",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name, prefix="pytorch-routed")
        self.model = model
        self.last_token_logits = last_token_logits
        self.debug_outputs = debug_outputs
        self.device = torch.device(device)

    def activate_impl(self) -> None:
        self.model.to(self.device).eval()

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for name in INPUT_NAMES:
            meta.add(name, dtype=np.int64, shape=(None, None))
        return meta

    @torch.inference_mode()
    def infer_impl(self, feed_dict: dict[str, Any]) -> OrderedDict[str, np.ndarray]:
        ids = torch.as_tensor(np.asarray(feed_dict["input_ids"]), device=self.device)
        mask = torch.as_tensor(np.asarray(feed_dict["attention_mask"]), device=self.device)
        start = time.perf_counter()
        out = self.model(
            ids,
            mask,
            mode="compact",
            logits_to_keep=1 if self.last_token_logits else 0,
            return_block_outputs=self.debug_outputs,
        )
        self.inference_time = time.perf_counter() - start
        outputs: OrderedDict[str, np.ndarray] = OrderedDict(logits=out.logits.float().cpu().numpy())
        if self.debug_outputs:
            for block, indices in enumerate(out.indices):
                outputs[indices_name(block)] = indices.cpu().numpy()
            for block, hidden in enumerate(out.block_outputs):
                outputs[hidden_name(block)] = hidden.float().cpu().numpy()
        return outputs

    def deactivate_impl(self) -> None:
        """Nothing to free: the model belongs to the caller."""
