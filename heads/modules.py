"""torch building blocks shared by the torch heads.

- :class:`WeightedLayerSum`: softmax-normalised learnable weights over L hidden states.
- :class:`LayerSweepLinear`: L independent linear probes, one per layer, trained in one pass.
- :func:`masked_mean`: hidden states [B, T, L, D] averaged over each row's valid frames.
"""
from __future__ import annotations

import torch


class WeightedLayerSum(torch.nn.Module):
    """x [..., L, D] -> sum_l softmax(w)_l * LN_l(x_l): [..., D].

    ``layer_norm``: a per-layer LayerNorm (no affine) before the sum, so layers of different scale
    compete on equal terms. Weights start equal (w = 0).
    """

    def __init__(self, num_layers: int, dim: int, layer_norm: bool = False):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(num_layers))
        self.layer_norm = layer_norm
        self.dim = dim

    def weights(self) -> torch.Tensor:
        """Softmax-normalised layer weights [L]."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm:
            x = torch.nn.functional.layer_norm(x, (self.dim,))
        return torch.einsum("...ld,l->...d", x, self.weights())


class SumThenHead(torch.nn.Module):
    """Weighted layer sum followed by a head: x [..., L, D] -> head(sum) [..., C]."""

    def __init__(self, num_layers: int, dim: int, head: torch.nn.Module, layer_norm: bool = False):
        super().__init__()
        self.sum = WeightedLayerSum(num_layers, dim, layer_norm)
        self.head = head

    def forward(self, x):
        return self.head(self.sum(x))


class LayerSweepLinear(torch.nn.Module):
    """One linear probe per layer: x [N, L, D] -> logits [N, L, C]. Trained together, the probes
    do not interact (the loss is a sum over layers), so this equals L separate fits in one pass."""

    def __init__(self, num_layers: int, dim: int, n_out: int):
        super().__init__()
        bound = 1.0 / dim ** 0.5
        self.weight = torch.nn.Parameter(torch.empty(num_layers, dim, n_out).uniform_(-bound, bound))
        self.bias = torch.nn.Parameter(torch.empty(num_layers, n_out).uniform_(-bound, bound))

    def forward(self, x):
        return torch.einsum("nld,ldc->nlc", x, self.weight) + self.bias


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h [B, T, L, D], mask [B, T] (True on valid frames) -> mean over valid frames [B, L, D]."""
    m = mask.to(h.dtype)[:, :, None, None]
    return (h * m).sum(1) / m.sum(1).clamp(min=1)
