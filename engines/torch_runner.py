"""PyTorch runners on Polygraphy's interface (activate / infer / deactivate).

Polygraphy's own PytRunner moves inputs to CUDA unconditionally, so the PyTorch references
are BaseRunner subclasses of our own, fed CPU tensors: the module runs where it was placed
(ftp_deploy.placement moves the inputs there and the outputs back): the routed model for
verify, and any module of (input_ids, attention_mask) for export validation.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from torch import nn

from ftp_deploy.formats.export_manifest import INPUT_NAMES, hidden_name, indices_name
from ftp_deploy.routed_model import RoutedModel


class TorchRunner(BaseRunner):
    """A placed module whose outputs come back as numpy arrays (floats as fp32), timed."""

    def __init__(self, module: nn.Module, name: str | None = None, prefix: str = "pytorch") -> None:
        super().__init__(name=name, prefix=prefix)
        self.module = module

    def activate_impl(self) -> None:
        self.module.eval()

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for name in INPUT_NAMES:
            meta.add(name, dtype=np.int64, shape=(None, None))
        return meta

    @torch.inference_mode()
    def infer_impl(self, feed_dict: dict[str, Any]) -> OrderedDict[str, np.ndarray]:
        ids = torch.as_tensor(np.asarray(feed_dict["input_ids"]))
        mask = torch.as_tensor(np.asarray(feed_dict["attention_mask"]))
        start = time.perf_counter()
        outputs = self.outputs(ids, mask)
        self.inference_time = time.perf_counter() - start
        return OrderedDict(
            (name, (t.float() if t.is_floating_point() else t).cpu().numpy()) for name, t in outputs.items()
        )

    def outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        """Nothing to free: the module belongs to the caller."""


class ModuleRunner(TorchRunner):
    """A module returning a tuple of tensors, named `output_names` in order (an export's graph module)."""

    def __init__(self, module: nn.Module, output_names: Sequence[str], name: str | None = None) -> None:
        super().__init__(module, name=name, prefix="pytorch-module")
        self.output_names = tuple(output_names)

    def outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(zip(self.output_names, self.module(input_ids, attention_mask), strict=True))


class RoutedTorchRunner(TorchRunner):
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
        name: str | None = None,
    ) -> None:
        super().__init__(model, name=name, prefix="pytorch-routed")
        self.model = model
        self.last_token_logits = last_token_logits
        self.debug_outputs = debug_outputs

    def outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out = self.model(
            input_ids,
            attention_mask,
            mode="compact",
            logits_to_keep=1 if self.last_token_logits else 0,
            return_block_outputs=self.debug_outputs,
        )
        outputs: OrderedDict[str, torch.Tensor] = OrderedDict(logits=out.logits)
        if self.debug_outputs:
            for block, indices in enumerate(out.indices):
                outputs[indices_name(block)] = indices
            for block, hidden in enumerate(out.block_outputs):
                outputs[hidden_name(block)] = hidden
        return outputs
