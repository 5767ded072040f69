"""Model construction: architecture (fc.py, cnn.py, resnet.py) + parameterization (init.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..config import Config, effective_train_outer
from .cnn import CNN
from .fc import FC
from .init import Rule, apply_parameterization, parameter_rules
from .resnet import ResNet


def skeleton(cfg: Config, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """The architecture on the meta device: shapes only, no memory (also what the memory estimate counts)."""
    m = cfg.model
    in_dim = math.prod(input_shape)
    with torch.device("meta"):
        if m.arch == "fc":
            return FC(in_dim, m.width, m.depth, out_dim, m.bias)
        if m.arch == "resnet":
            return ResNet(in_dim, m.width, m.depth, out_dim, m.tau, m.bias)
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs image inputs (C, H, W), got shape {input_shape}")
        return CNN(tuple(input_shape), m.width, m.depth, out_dim, m.kernel_size, m.bias)


def build_model(cfg: Config, input_shape: tuple[int, ...], out_dim: int,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                shard: Callable[[nn.Module], dict] | None = None) -> tuple[nn.Module, dict[str, Rule]]:
    """The initialised model and its per-parameter rules.

    `shard(model)`, when given, is called on the meta-device model to replace wide parameters by their
    local tensor-parallel shards (it returns name -> Shard); each rank then initialises only its shards.
    """
    m = cfg.model
    model = skeleton(cfg, input_shape, out_dim)
    # from the global shapes
    rules = parameter_rules(model, m.param, m.width, effective_train_outer(cfg), m.train_input_only)
    shards = shard(model) if shard is not None else None
    model = model.to_empty(device=device).to(dtype)
    apply_parameterization(model, rules, cfg.seed, shards)
    return model, rules


__all__ = ["build_model", "skeleton", "FC", "CNN", "ResNet", "Rule"]
