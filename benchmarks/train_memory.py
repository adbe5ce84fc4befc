"""GPU memory of router training on a LLaMA-2-7B-shaped model: computed here, measured on a GPU.

Computed (any machine): the base weights in their dtype, the router, and the activations one
training step keeps for the backward pass at T tokens, with and without --checkpoint-activations,
counted from the tensors a routed decoder block saves (bf16, SDPA attention, masked mode with
the straight-through gate, HF's RMSNorm which keeps an fp32 copy of its input):

    per block, per sequence:  attention  2Th (norm input) + 4Th (its fp32 copy) + 2Th (q/k/v input)
                                         + 6Th (q, k, v) + 2Th (o_proj input) + 2T^2 (the additive mask)
                              MLP        2Th + 4Th (norm) + 2Th (gate/up input) + 8Ti (gate, SiLU, up, product)
                              gate       2Th (the block's update, times the gate)
    = 26Th + 8Ti + 2T^2 bytes; with checkpointing a block keeps only its input (2Th) and one block's
    worth is alive again while it is recomputed.

Measured (with a CUDA GPU, `--measure`; benchmarks/gpu_check.py runs it): random bf16 weights of
that shape on the GPU, one RouterTrainer step at T tokens, torch.cuda.max_memory_allocated and the
step time, with and without checkpointing.

    python benchmarks/train_memory.py [--seq-len 2048] [--batch 1] [--measure] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json

GIB = 1024**3
ROUTER_PARAMETERS = 4 * 64 + 64 + 64 + 1  # FactorRouter(64): 4 -> 64 -> 1


@dataclass(frozen=True)
class Shape:
    """LLaMA-2-7B's (no grouped KV heads)."""

    layers: int = 32
    hidden: int = 4096
    intermediate: int = 11008
    heads: int = 32
    kv_heads: int = 32
    vocab: int = 32000

    def parameters(self) -> int:
        h, i, kv = self.hidden, self.intermediate, self.hidden * self.kv_heads // self.heads
        block = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
        return self.layers * block + 2 * self.vocab * h + h


def computed(shape: Shape, seq_len: int, batch: int, weight_bytes: int = 2) -> dict[str, Any]:
    t, h, i = seq_len, shape.hidden, shape.intermediate
    block = batch * (26 * t * h + 8 * t * i + 2 * t * t)
    kept_input = batch * 2 * t * h
    weights = shape.parameters() * weight_bytes
    without = shape.layers * block
    with_checkpointing = shape.layers * kept_input + block
    return {
        "parameters": shape.parameters(),
        "weights_gib": weights / GIB,
        "router_parameters": ROUTER_PARAMETERS,
        "router_and_adamw_bytes": ROUTER_PARAMETERS * 4 * 4,  # fp32 weights, grads, two moments
        "activations_gib": {"no_checkpointing": without / GIB, "checkpoint_activations": with_checkpointing / GIB},
        "total_gib": {
            "no_checkpointing": (weights + without) / GIB,
            "checkpoint_activations": (weights + with_checkpointing) / GIB,
        },
    }


def measure(shape: Shape, seq_len: int, batch: int) -> dict[str, Any]:
    """One training step on random bf16 weights of `shape`, on the current CUDA GPU (needs one)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ftp_deploy.placement import attach_input_alignment
    from ftp_deploy.schedule import Schedule
    from ftp_deploy.training.config import LossWeights, TrainConfig
    from ftp_deploy.training.trainer import RouterTrainer, new_router

    config = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab,
        max_position_embeddings=max(4096, seq_len),
    )
    started = time.perf_counter()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    attach_input_alignment(model, "cuda:0")
    built = time.perf_counter() - started
    weights = torch.cuda.memory_allocated()
    blocks = torch.randint(4, shape.vocab, (batch * 2, seq_len), generator=torch.Generator().manual_seed(0))
    rows = []
    for checkpointed in (False, True):
        trainer = RouterTrainer(
            model,
            Schedule.uniform(0.3, shape.layers),
            blocks,
            TrainConfig(steps=2, batch_size=batch),
            LossWeights(),
            new_router(0),
            0,
            checkpoint_activations=checkpointed,
        )
        row: dict[str, Any] = {"checkpoint_activations": checkpointed}
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        try:
            for step in range(2):  # the first step includes kernel selection; the second is timed
                began = time.perf_counter()
                loss = trainer.train_step().loss
                torch.cuda.synchronize()
                row[f"step_{step}_seconds"] = time.perf_counter() - began
            row |= {"loss": loss, "peak_gib": torch.cuda.max_memory_allocated() / GIB}
            row["activations_gib"] = row["peak_gib"] - weights / GIB
        except torch.cuda.OutOfMemoryError as err:
            row["out_of_memory"] = str(err).split(". ")[0]
        del trainer
        torch.cuda.empty_cache()
        rows.append(row)
    return {"weights_gib": weights / GIB, "build_seconds": built, "gpu": torch.cuda.get_device_name(), "steps": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1, help="sequences per step (train --batch-size)")
    parser.add_argument("--measure", action="store_true", help="also measure on the CUDA GPU")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    shape = Shape()
    figures: dict[str, Any] = {"shape": asdict(shape), "seq_len": args.seq_len, "batch": args.batch}
    figures["computed"] = computed(shape, args.seq_len, args.batch)
    c = figures["computed"]
    print(f"LLaMA-2-7B shape, {c['parameters'] / 1e9:.2f}B parameters, T={args.seq_len}, batch {args.batch}")
    print(f"  weights (bf16)        {c['weights_gib']:6.1f} GiB; router {c['router_parameters']} parameters")
    for key in ("no_checkpointing", "checkpoint_activations"):
        print(f"  {key:<24}activations {c['activations_gib'][key]:5.1f} GiB, total {c['total_gib'][key]:5.1f} GiB")
    if args.measure:
        figures["measured"] = measure(shape, args.seq_len, args.batch)
        for row in figures["measured"]["steps"]:
            print(f"  measured: {row}")
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
