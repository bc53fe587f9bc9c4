"""Projection / prediction MLPs and the DINO head.

Shapes: every head maps ``(B, in_dim) -> (B, out_dim)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLPHead(nn.Module):
    """``num_layers`` linear layers with hidden BN + ReLU (SimCLR / MoCo / BYOL / Barlow style).

    Args:
        in_dim, hidden_dim, out_dim: layer widths.
        num_layers: number of linear layers (>= 1).
        hidden_bn: BatchNorm1d after each hidden linear layer.
        last_bn: affine-free BatchNorm1d on the output (MoCo v3, Barlow Twins use BN there).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        hidden_bn: bool = True,
        last_bn: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not hidden_bn))
            if hidden_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class DINOHead(nn.Module):
    """DINO projection head (Caron et al. 2021): MLP (GELU) -> bottleneck -> L2-normalise ->
    weight-normalised linear layer to ``out_dim`` prototypes (logits).

    With ``norm_last_layer`` the weight-norm gain is fixed at 1 (the paper's stabilising default).
    The last layer is ``last_weight`` / ``last_gain`` (DINO freezes it during the first epoch).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim), nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        weight = nn.init.trunc_normal_(torch.empty(out_dim, bottleneck_dim), std=0.02)
        self.last_weight = nn.Parameter(weight)
        self.last_gain = nn.Parameter(torch.ones(out_dim), requires_grad=not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        w = F.normalize(self.last_weight, dim=1) * self.last_gain.unsqueeze(1)
        return F.linear(z, w)
