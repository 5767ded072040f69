"""Fully connected ReLU net (Allen-Zhu, Li & Song 2018):
h_0 = relu(A x),  h_l = relu(W_l h_{l-1}) for l = 1..L,  y = B h_L.
"""

import torch
from torch import nn

from .layers import ScaledLinear


class FC(nn.Module):
    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int, bias: bool = False):
        super().__init__()
        self.input = ScaledLinear(in_dim, width, bias)  # A
        self.hidden = nn.ModuleList(ScaledLinear(width, width, bias) for _ in range(depth))  # W_1..W_L
        self.output = ScaledLinear(width, out_dim, bias)  # B
        # Separate ReLU modules so metrics can hook each layer's pre-activation.
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(depth + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.acts[0](self.input(x.flatten(1)))
        for layer, act in zip(self.hidden, self.acts[1:]):
            h = act(layer(h))
        return self.output(h)
