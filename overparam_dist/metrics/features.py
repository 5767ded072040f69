"""Feature movement: how far each ReLU layer's pre-activations on the probe set moved from init (names.py).

h_l is the input of ReLU layer l (ActivationPattern.preactivations), dh_l = h_l(t) - h_l(0):
feature/delta_rms/<layer> = sqrt(mean dh_l^2) over every coordinate (probe sample, unit[, position]), mup's
coordinate check; feature/delta_rel/<layer> = ||dh_l||_F / ||h_l(0)||_F; feature/delta_rel pools the latter over
the trained layers. The ReLU flips (drift/act_flip*) come from the same sums: the signs of h_l(t) against h_l(0).
Sums are float64 and additive, so a large probe set is taken in chunks of samples and a layer whose activations are
tensor-parallel shards sums its parts over tp (`reduce_tp`, in place).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from . import names


def init_terms(init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What layer_sums needs of h(0), the same on every row: (||h(0)||^2 in float64, the signs h(0) > 0)."""
    return torch.linalg.vector_norm(init, dtype=torch.float64).square(), init > 0


def layer_sums(init: torch.Tensor, now: torch.Tensor,
               terms: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """[||dh||^2, ||h(0)||^2, coordinates, sign flips] of one layer on some probe samples, float64: additive over
    chunks of samples and over tp shards. `terms`: init_terms(init), when kept. dh is taken in the model's dtype
    (one rounding of a difference) and its square summed in float64."""
    sq0, pos0 = terms if terms is not None else init_terms(init)
    moved = torch.linalg.vector_norm(now - init, dtype=torch.float64).square()
    return torch.stack([moved, sq0, torch.tensor(float(init.numel()), dtype=torch.float64, device=init.device),
                        (pos0 != (now > 0)).sum().double()])


def activation_metrics(sums: dict[str, torch.Tensor], trained: Iterable[str], sharded: Iterable[str] = (),
                       reduce_tp: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """drift/act_flip* and feature/* of one row from each layer's layer_sums over the whole probe set.

    `trained`: the layers the pooled values cover; `sharded`: the layers whose sums are local tp shards, summed
    by `reduce_tp` (in place)."""
    trained, sharded = set(trained), set(sharded)
    out: dict[str, float] = {}
    moved_total = init_total = flipped_total = units_total = 0.0
    for layer, sums in sums.items():
        if layer in sharded:
            if reduce_tp is None:
                raise ValueError(f"layer {layer!r} is sharded but no reduce_tp was given")
            reduce_tp(sums)
        moved, size, count, flipped = (float(v) for v in sums)
        out[names.drift_act_flip(layer)] = flipped / count
        out[names.feature_delta_rms(layer)] = math.sqrt(moved / count)
        if size > 0:
            out[names.feature_delta_rel(layer)] = math.sqrt(moved / size)
        if layer in trained:
            moved_total, init_total = moved_total + moved, init_total + size
            flipped_total, units_total = flipped_total + flipped, units_total + count
    if units_total:
        out[names.DRIFT_ACT_FLIP] = flipped_total / units_total
    if init_total > 0:
        out[names.FEATURE_DELTA_REL] = math.sqrt(moved_total / init_total)
    return out


def feature_movement(init: dict[str, torch.Tensor], now: dict[str, torch.Tensor], trained: Iterable[str],
                     sharded: Iterable[str] = (),
                     reduce_tp: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """The feature/* metrics of one row from the init and current pre-activations (layer -> tensor)."""
    sums = {layer: layer_sums(init[layer], h) for layer, h in now.items()}
    return {k: v for k, v in activation_metrics(sums, trained, sharded, reduce_tp).items()
            if k.startswith(names.FEATURE_DELTA_REL) or k.startswith(names.FEATURE_DELTA_RMS)}
