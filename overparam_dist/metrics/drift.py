"""Weight drift from initialisation.

W_0 is never stored: every weight was generated tile by tile from the seed (models/init.py), so the
metrics regenerate W_0 one row block at a time and compare it with W_t. That is exact (bit-identical
W_0), costs one block of extra memory instead of a second copy of the model, and works unchanged on
tensor-parallel shards (each rank regenerates only its own block).
"""

from __future__ import annotations

import math

import torch

from ..models.init import TILE, Rule, generate_block, shape2d
from . import names


def layer_name(param_name: str) -> str:
    """'hidden.0.weight' -> 'hidden.0'; biases are reported with their layer's weight."""
    return param_name.rsplit(".", 1)[0]


@torch.no_grad()
def diff_sq_norm(p: torch.Tensor, rule: Rule, seed: int, name: str) -> float:
    """||p - p_0||_F^2, regenerating p_0 one tile at a time (block sums added in float64)."""
    w = p.detach().reshape(shape2d(p.shape))
    total = 0.0
    for r0 in range(0, w.shape[0], TILE):
        r1 = min(r0 + TILE, w.shape[0])
        for c0 in range(0, w.shape[1], TILE):
            c1 = min(c0 + TILE, w.shape[1])
            w0 = generate_block(rule, seed, name, tuple(w.shape), (r0, r1), (c0, c1)).to(p.device, p.dtype)
            total += float((w[r0:r1, c0:c1] - w0).square_().sum(dtype=torch.float64))
    return total


class WeightDrift:
    """drift/weight_rel (all trained parameters) and drift/weight_rel/<layer>."""

    def __init__(self, named_params: dict[str, torch.Tensor], rules: dict[str, Rule], seed: int):
        self.params = named_params  # trained parameters only, by name
        self.rules, self.seed = rules, seed
        # ||theta_0||^2, from the live tensors right after init (they are theta_0 then).
        self.init_sq = {n: float(p.detach().double().pow(2).sum()) for n, p in named_params.items()}

    def compute(self) -> dict[str, float]:
        diff = {n: diff_sq_norm(p, self.rules[n], self.seed, n) for n, p in self.params.items()}
        out: dict[str, float] = {}
        total_init = sum(self.init_sq.values())
        out[names.DRIFT_WEIGHT_REL] = math.sqrt(sum(diff.values()) / total_init) if total_init > 0 else float("nan")
        by_layer: dict[str, list[float]] = {}
        for n in self.params:
            acc = by_layer.setdefault(layer_name(n), [0.0, 0.0])
            acc[0] += diff[n]
            acc[1] += self.init_sq[n]
        for layer, (d, i) in by_layer.items():
            out[names.drift_weight_rel(layer)] = math.sqrt(d / i) if i > 0 else float("nan")
        return out
