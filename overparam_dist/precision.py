"""`train.precision`: the arithmetic of the training step, and of nothing else.

- fp32: float32 matmuls and convolutions in full (IEEE) precision.
- tf32: TF32 tensor-core matmuls and convolutions on CUDA (a 10-bit mantissa inside the product, float32 around
  it); no effect on CPU, which has no TF32.
- bf16: the forward pass under torch.autocast to bfloat16 (weights, gradients and the optimizer stay float32);
  the loss is taken in float32.

Metrics always run under `exact()`, outside the step's autocast region: IEEE float32 (or the weights' float64),
TF32 off for matmuls and for convolutions. The latter matters: PyTorch's default lets cuDNN convolutions use TF32
(torch.backends.cudnn.conv.fp32_precision = "tf32"), which would put a 1e-3 relative error into every NTK entry
of a CNN.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def _fp32_precision(mode: str) -> Iterator[None]:
    """Set matmul and convolution float32 precision ("ieee" or "tf32"), restoring the previous settings."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = mode
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


@contextlib.contextmanager
def training_step(precision: str, device: torch.device) -> Iterator[None]:
    """The forward and backward of one update under `train.precision`."""
    with _fp32_precision("tf32" if precision == "tf32" else "ieee"):
        if precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield


def backward_step(precision: str):
    """The backward of one update: TF32 under tf32 (autocast does not wrap a backward pass)."""
    return _fp32_precision("tf32" if precision == "tf32" else "ieee")


def exact():
    """Everything but the training step: IEEE float32 matmuls and convolutions (no TF32). Not an autocast region:
    autocast caches its bfloat16 copies of the weights until the outermost autocast region exits, so wrapping
    the whole run in one would hand every step the weights of the first (the training step's own region must
    be the outermost)."""
    return _fp32_precision("ieee")
