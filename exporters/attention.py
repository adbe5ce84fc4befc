"""The exported graphs' attention, registered with transformers' AttentionInterface so the Hugging Face
layers call it unchanged.

Two cases, told apart by the mask the layer is given:

- **A mask** (the decode step: one query over a block's cached slots). transformers' eager attention
  first repeats every key/value head for each query head of its group (`repeat_kv`), which an
  exported graph then does with an Expand that writes the whole cache n_rep times, at every decode
  step. Folding the group into the query rows instead gives the same products (query head
  h = kv_head * n_rep + r, as `repeat_kv` orders them) without the copy.
- **No mask** (a prefill block: `RoutedModel.run_layer_causal` puts each row's valid slots first in
  ascending original position, so plain causal attention over the slots is exact). The *fused*
  form exports it as one com.microsoft `GroupQueryAttention` node: ONNX Runtime's CPU kernel keeps
  memory linear in the prompt (measured: 43 MiB over its inputs at 5734 slots, where the
  MatMul-Softmax chain needs 4.7 GB) and is 4-6x faster than the chain there. TensorRT's parser
  does not take contrib ops, so the *standard* form (`--engine trt`) writes the chain with a causal
  mask built in the graph, which TensorRT fuses itself. Run eagerly both are PyTorch's SDPA with
  is_causal (memory-linear on CPU too), the reference export validation compares against.

The fused form's decode step (`InPlaceSlots.attend`, called by exporters/pieces.InPlaceDecodeBlock)
is one GroupQueryAttention node in token-generation mode over the layer's capacity-sized buffers,
rotary included: it rotates the new query and key at their explicit positions, writes the key and
value at each row's cached count and attends to the slots up to it. ONNX Runtime writes in place
when the same buffer is bound as past and present (engines/onnx_generation.py). Run eagerly it
computes the same thing with transformers' rotary, a scatter and a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from ftp_deploy.routed_model import declare_causal_when_unmasked
from ftp_deploy.routing import additive_mask, causal_additive_mask

# Standard ONNX ops only (what TensorRT parses); the fused form adds GroupQueryAttention in the prefill.
STANDARD_ATTENTION = "ftp_grouped"
FUSED_ATTENTION = "ftp_grouped_fused"
ATTENTION_FORMS = {"standard": STANDARD_ATTENTION, "fused": FUSED_ATTENTION}
GQA_DOMAIN, GQA_OP = "com.microsoft", "GroupQueryAttention"
GQA_OPSET = 1
# ONNX Runtime's GroupQueryAttention kernels refuse other head sizes ("head_size must be a multiple of 8").
GQA_HEAD_MULTIPLE = 8


def fused_attention_fits(head_dim: int) -> bool:
    """Whether ONNX Runtime's GroupQueryAttention takes heads of `head_dim` (every LLaMA-family size in use does)."""
    return head_dim % GQA_HEAD_MULTIPLE == 0


def grouped_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    *,
    fused: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """query [B, H, Q, D], key/value [B, KV, S, D], additive mask [B, 1, Q, S] or None (causal over
    the slots) -> ([B, Q, H, D], weights or None)."""
    # During export a block's slot count is symbolic: no guard on it (causal over one slot is the same).
    if attention_mask is None and (torch.onnx.is_in_onnx_export() or query.shape[2] > 1):
        return causal_attention(query, key, value, scaling, fused), None
    return _masked_attention(query, key, value, attention_mask, scaling)


def _masked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, queries, dim = query.shape
    kv_heads = key.shape[1]
    groups = query.reshape(batch, kv_heads, heads // kv_heads * queries, dim)
    weights = torch.matmul(groups, key.transpose(2, 3)) * scaling  # [B, KV, n_rep * Q, S]
    if attention_mask is not None:
        rows = weights.shape[-1]
        weights = weights.reshape(batch, kv_heads, heads // kv_heads, queries, rows) + attention_mask.unsqueeze(2)
        weights = weights.reshape(batch, kv_heads, heads // kv_heads * queries, rows)
    weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights, value).reshape(batch, heads, queries, dim)
    return output.transpose(1, 2).contiguous(), weights


def causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, fused: bool
) -> torch.Tensor:
    """Plain causal attention over the slots: [B, H, Q, D] queries, [B, KV, Q, D] keys/values -> [B, Q, H, D]."""
    if torch.onnx.is_in_onnx_export():
        if fused:
            return _group_query_attention(query, key, value, scaling)
        mask = causal_additive_mask(query.shape[2], query.dtype, query.device)
        return _masked_attention(query, key, value, mask, scaling)[0]
    n_rep = query.shape[1] // key.shape[1]
    output = torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(key, n_rep), repeat_kv(value, n_rep), is_causal=True, scale=scaling
    )
    return output.transpose(1, 2).contiguous()


def _group_query_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """One com.microsoft GroupQueryAttention node, prompt mode (no past), keys and queries already rotated.

    Every row is given the full slot count as its length: the valid slots come first and causal
    attention keeps each of them to the valid ones before it, so per-row lengths would only change
    the padding slots' own outputs, which nothing reads. `total_sequence_length` is the slot count
    (DEPLOYMENT_FACTS: a wrong one silently gives wrong output).
    """
    batch, heads, slots, dim = query.shape
    kv_heads = key.shape[1]

    def packed(states: torch.Tensor) -> torch.Tensor:  # [B, N, S, D] -> [B, S, N * D], GQA's layout
        return states.transpose(1, 2).reshape(batch, slots, states.shape[1] * dim)

    # The slot axis's size as a tensor (Shape, Squeeze, Cast in the graph), so the lengths follow each block's own K.
    total = torch.scalar_tensor(slots, dtype=torch.int32)
    seqlens_k = (total - 1).expand(batch)
    output, _, _ = torch.onnx.ops.symbolic_multi_out(
        f"{GQA_DOMAIN}::{GQA_OP}",
        (packed(query), packed(key), packed(value), None, None, seqlens_k, total),
        {"num_heads": heads, "kv_num_heads": kv_heads, "scale": float(scaling), "do_rotary": 0},
        dtypes=(query.dtype, key.dtype, value.dtype),
        shapes=((batch, slots, heads * dim), (batch, kv_heads, slots, dim), (batch, kv_heads, slots, dim)),
        version=GQA_OPSET,
    )
    return output.reshape(batch, slots, heads, dim)


@dataclass(frozen=True)
class RotaryTables:
    """cos and sin [max_positions, head_dim / 2] of every position, as the model's rotary embedding computes them
    (GroupQueryAttention's cos_cache and sin_cache; transformers' cos and sin repeat them over both halves)."""

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def of(cls, rotary_emb: Any, positions: int) -> RotaryTables:
        """The fp32 tables of positions [0, `positions`)."""
        probe = torch.zeros(1, positions, 1)
        with torch.no_grad():
            cos, sin = rotary_emb(probe, torch.arange(positions)[None])
        half = cos.shape[-1] // 2
        return cls(cos[0, :, :half].contiguous(), sin[0, :, :half].contiguous())


@dataclass
class InPlaceSlots:
    """One layer's capacity-sized cache for a decode step: buffers [B, KV, C, D] whose slots [0, length[b])
    hold row b's cached keys and values (keys rotated at their positions)."""

    past_key: torch.Tensor
    past_value: torch.Tensor
    length: torch.Tensor  # [B] int32

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        position_ids: torch.Tensor,
        rotary: RotaryTables,
        scaling: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The new token's unrotated query [B, 1, H * D], key and value [B, 1, KV * D] at `position_ids` [B, 1]
        -> (attention output [B, 1, H * D], the buffers with the new key and value written)."""
        if torch.onnx.is_in_onnx_export():
            return self._group_query_attention(query, key, value, position_ids, rotary, scaling)
        batch, dim = query.shape[0], self.past_key.shape[3]

        def heads(states: torch.Tensor) -> torch.Tensor:  # [B, 1, N * D] -> [B, N, 1, D]
            return states.reshape(batch, 1, -1, dim).transpose(1, 2)

        cos, sin = (torch.cat([table[position_ids]] * 2, dim=-1) for table in (rotary.cos, rotary.sin))
        rotated_query, rotated_key = apply_rotary_pos_emb(heads(query), heads(key), cos, sin)
        slots = torch.arange(self.past_key.shape[2], device=key.device)
        new = (slots[None, :] == self.length[:, None].long())[:, None, :, None]  # [B, 1, C, 1]
        present_key = torch.where(new, rotated_key, self.past_key)
        present_value = torch.where(new, heads(value), self.past_value)
        allowed = (slots[None, :] <= self.length[:, None].long()).unsqueeze(1)  # [B, 1, C]
        mask = additive_mask(allowed, query.dtype)
        output = _masked_attention(rotated_query, present_key, present_value, mask, scaling)[0]
        return output.reshape(batch, 1, -1), present_key, present_value

    def _group_query_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        position_ids: torch.Tensor,
        rotary: RotaryTables,
        scaling: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GroupQueryAttention in token-generation mode: `seqlens_k` is each row's cached count (the slot
        the new entry goes to), `total_sequence_length` the buffer's capacity (DEPLOYMENT_FACTS: a smaller
        value silently gives wrong output), rotary on the halves (not interleaved) at `position_ids`."""
        dim = self.past_key.shape[3]
        capacity = torch.scalar_tensor(self.past_key.shape[2], dtype=torch.int32)
        output, present_key, present_value = torch.onnx.ops.symbolic_multi_out(
            f"{GQA_DOMAIN}::{GQA_OP}",
            (
                query,
                key,
                value,
                self.past_key,
                self.past_value,
                self.length,
                capacity,
                rotary.cos,
                rotary.sin,
                position_ids,
            ),
            {
                "num_heads": query.shape[2] // dim,
                "kv_num_heads": key.shape[2] // dim,
                "scale": float(scaling),
                "do_rotary": 1,
                "rotary_interleaved": 0,
            },
            dtypes=(query.dtype, key.dtype, value.dtype),
            shapes=(tuple(query.shape), tuple(self.past_key.shape), tuple(self.past_value.shape)),
            version=GQA_OPSET,
        )
        return output, present_key, present_value


def use_grouped_attention(model: Any, form: str = "standard") -> None:
    """Make `model`'s attention layers call `grouped_attention` in `form` ("standard" or "fused"),
    registered with transformers with eager attention's additive masks."""
    name = ATTENTION_FORMS[form]
    AttentionInterface.register(name, partial(grouped_attention, fused=form == "fused"))
    AttentionMaskInterface.register(name, eager_mask)
    declare_causal_when_unmasked(name)
    model.set_attn_implementation(name)
