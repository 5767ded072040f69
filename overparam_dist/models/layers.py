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
    """'same' convolution, stride 1. padding_mode="circular" wraps the image around (a torus), so every output
    position sees k*k inputs and a He-initialised layer preserves E|h|^2; zero padding loses the border's share
    at every layer (on 4 x 4 images 0.76 of |h|^2 is left per layer)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = False,
                 padding_mode: str = "zeros"):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias,
                         padding_mode=padding_mode)
        self.weight_multiplier = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            y = F.conv2d(x, self.weight, None, self.stride, 0)
        else:
            y = F.conv2d(x, self.weight, None, self.stride, self.padding)
        if self.weight_multiplier != 1.0:
            y = y * self.weight_multiplier
        return y if self.bias is None else y + self.bias[:, None, None]
