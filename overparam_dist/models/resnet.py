"""Fully connected residual ReLU net (the paper's ResNet):
h_0 = relu(A x),  h_l = relu(h_{l-1} + tau * W_l h_{l-1}),  y = B h_L.
"""

import torch
from torch import nn

from .layers import ScaledLinear


class ResNet(nn.Module):
    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int, tau: float, bias: bool = False):
        super().__init__()
        self.tau = tau
        self.input = ScaledLinear(in_dim, width, bias)
        self.hidden = nn.ModuleList(ScaledLinear(width, width, bias) for _ in range(depth))
        self.output = ScaledLinear(width, out_dim, bias)
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(depth + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.acts[0](self.input(x.flatten(1)))
        for layer, act in zip(self.hidden, self.acts[1:]):
            h = act(h + self.tau * layer(h))
        return self.output(h)
