"""Faster implementations of the model's modules, swapped in behind the same interfaces.

``nmt.model`` is the paper in plain PyTorch. What makes it fast where plain PyTorch is slow lives here, each
with its reason and its measurement in its own module:

- ``linear``: bf16 matrix products on row counts padded to a bucket (oneDNN prepares a kernel per shape);
  the FFN's ReLU fused into its first product.
- ``dropout``: a bool mask from 16-bit halves of the generator's 32-bit draws.
- ``attention``: projections through ``linear``; the fused attention kernel in float32 under bf16 on CPUs.
- ``varlen``: packed rows (``--packing``) through the variable-length flash kernel on GPUs, no dense mask.
- ``output_loss``: the output projection and the label-smoothed loss together, logits never stored whole
  (training's loss on every device).
- ``allocator``: glibc kept from returning large blocks to the system between steps.
- ``packed``: the search's projections (encoder, decoding steps) on weights arranged once: through the C
  product of ``native`` where it is built, else oneDNN's on a packed weight (CPU, float32).
- ``native``: the search's projections and a decoding step's attention in C (the self-attention over keys and
  values left where they were written, read through each hypothesis's ancestors, so that no cache is
  reordered; the cross-attention over keys stored transposed), compiled on
  first use by the machine's C compiler (CPU, float32; oneDNN's products and torch's calls without one).

``install`` swaps the first four into a model: each module's class becomes a subclass computing the same
function with the same parameters and state dict, so checkpoints, hooks and ``torch.compile`` see the
model they expect. The subclasses fall back to the plain computation wherever their trick does not apply
(GPUs, float32 where noted), so installing them is only ever a speed-up.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nmt.kernels.attention import CpuAttention
from nmt.kernels.dropout import MaskDropout
from nmt.kernels.linear import BucketedLinear, linear
from nmt.kernels.output_loss import output_cross_entropy
from nmt.kernels.varlen import VarlenAttention
from nmt.model.attention import MultiHeadAttention
from nmt.model.layers import FeedForward

__all__ = ["install", "output_cross_entropy"]


class FusedFeedForward(FeedForward):
    """``FeedForward`` with the ReLU inside the first product (in place on its output, the largest
    activation of a layer: autograd keeps what ReLU's backward needs, its output, either way)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(linear(x, self.fc1.weight, self.fc1.bias, relu=True)))


def install(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Swap the faster modules for ``device`` into ``model`` in place (and return it): on CPUs the classes of
    its linear, dropout, attention and feed-forward modules become their subclasses here; on GPUs its
    attention computes packed rows with the variable-length flash kernel."""
    if torch.device(device).type == "cpu":
        faster = {nn.Linear: BucketedLinear, nn.Dropout: MaskDropout, MultiHeadAttention: CpuAttention, FeedForward: FusedFeedForward}
    else:
        faster = {MultiHeadAttention: VarlenAttention}
    for module in model.modules():
        if type(module) in faster:
            module.__class__ = faster[type(module)]
    return model
