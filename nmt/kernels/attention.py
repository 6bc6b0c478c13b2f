"""Multi-head attention for CPUs: bucketed projections, and the fused kernel run in float32 under bf16.

The CPU's fused attention kernel is about 10× slower in bf16 than in float32 (forward and backward, heads of
12 positions, torch 2.13); casting the heads to float32 and the result back costs far less. The projections
stay in bf16 (``nmt.kernels.linear``), and autocast, which would cast the inputs back, is off for the call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.kernels.linear import linear
from nmt.model.attention import MultiHeadAttention


class CpuAttention(MultiHeadAttention):
    """``MultiHeadAttention`` (same parameters, same function) with the CPU's faster paths."""

    def in_projection(self, x: Tensor, rows: slice) -> Tensor:
        return linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows])

    def attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
            return super().attention(q, k, v, mask, causal)
        dropout = self.dropout if self.training else 0.0
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal, dropout_p=dropout)
        return out.to(q.dtype)
