"""Linear and conv layers with a fixed forward multiplier: y = multiplier * (W x) + b.

The NTK parameterization trains N(0, 1) weights and puts 1/sqrt(fan_in) in the forward pass;
the other parameterizations use multiplier 1, which makes these plain nn.Linear / nn.Conv2d.
Subclassing keeps them recognisable to torch's tensor-parallel styles and to the NTK code.
"""

import torch
import torch.nn.functional as F
from torch import nn


class ScaledLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.weight_multiplier = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.weight_multiplier != 1.0:
            y = y * self.weight_multiplier
        return y if self.bias is None else y + self.bias


class ScaledConv2d(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.weight_multiplier = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight, None, self.stride, self.padding)
        if self.weight_multiplier != 1.0:
            y = y * self.weight_multiplier
        return y if self.bias is None else y + self.bias[:, None, None]
