"""The paper's convolutional ReLU net (channels = width, stride 1, 'same' size with circular padding):
h_0 = relu(conv_A(x)),  h_l = relu(conv_{W_l}(h_{l-1})),  y = B vec(h_L).

Circular padding keeps |h_l| at init from layer to layer, as the theory's layers do (layers.ScaledConv2d);
zero padding would shrink it by depth and confound depth effects with the border.
"""

import torch
from torch import nn

from .layers import ScaledConv2d, ScaledLinear


class CNN(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], width: int, depth: int, out_dim: int,
                 kernel_size: int = 3, bias: bool = False):
        super().__init__()
        channels, height, wide = in_shape
        self.input = ScaledConv2d(channels, width, kernel_size, bias, padding_mode="circular")
        self.hidden = nn.ModuleList(ScaledConv2d(width, width, kernel_size, bias, padding_mode="circular")
                                    for _ in range(depth))
        self.output = ScaledLinear(width * height * wide, out_dim, bias)
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(depth + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.acts[0](self.input(x))
        for layer, act in zip(self.hidden, self.acts[1:]):
            h = act(layer(h))
        return self.output(h.flatten(1))
