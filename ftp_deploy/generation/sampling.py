"""The one sampler: transformers' own temperature and top-p warpers, then a multinomial draw.

transformers' `generate` samples a row's next token from the warped distribution with one
`torch.multinomial` on the global generator, seeded by `torch.manual_seed(seed)` (generation/timed).
The ONNX Runtime loop (engines/onnx_generation) draws through this class with its own generator seeded
alike, so both runtimes draw the same random numbers in the same order: on the same logits they pick the
same tokens, greedy or sampled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers.generation.logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper


class Sampler:
    def __init__(self, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None):
        self.do_sample = do_sample
        # The warpers transformers' generate builds for these settings (it leaves out the neutral ones too).
        self.warpers = LogitsProcessorList()
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def pick(self, logits: np.ndarray, sequences: Any = None) -> np.ndarray:
        """The next token [B] of every row from its logits [B, vocab]: argmax, or a draw from the warped softmax.

        `sequences` ([B, T] tokens so far) is what transformers' warpers are given; these two ignore it.
        """
        scores = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
        if not self.do_sample:
            return scores.argmax(-1).numpy().astype(np.int64)
        scores = self.warpers(sequences, scores)
        probs = torch.nn.functional.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(1).numpy().astype(np.int64)
