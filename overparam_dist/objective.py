"""What a trial minimises, and on which samples: the targets the loss compares the outputs with, the loss, and the
mini-batch of each step (train.py's loop; metrics/hessian.py differentiates the same loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import Config
from .data import Dataset


def targets(ds: Dataset, cfg: Config, y: torch.Tensor | None = None) -> torch.Tensor:
    """What the loss compares the outputs with: one-hot labels under mse, else the labels or targets (of the
    training set, or of `y`, the held-out set's)."""
    y = ds.y if y is None else y
    if ds.is_classification and cfg.train.loss == "mse":
        return F.one_hot(y, ds.num_outputs).float()
    return y


def loss_fn(cfg: Config):
    if cfg.train.loss == "ce":
        return lambda out, t: F.cross_entropy(out, t)
    return lambda out, t: 0.5 * (out - t).pow(2).sum(dim=1).mean()


def batch_indices(cfg: Config, n: int, step: int) -> torch.Tensor:
    """Global indices of the mini-batch of `step`: a function of (seed, step) only, so resume is exact."""
    b = cfg.train.batch_size
    per_epoch = n // b
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
    return torch.randperm(n, generator=g)[k * b:(k + 1) * b]
